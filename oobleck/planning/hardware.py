"""Hardware specs: what one node offers to the cost model.

Assumptions:
    * Nodes are homogeneous within a job (the Oobleck setting); a node is the failure unit.
    * Bandwidths are per GPU and per direction: one stage talking to the next gets the whole link.
    * Numbers for catalogue entries are vendor peak figures (dense bf16) times a typical
      achievable utilisation; calibrate them from a measured profile when precision matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oobleck.errors import ConfigError
from oobleck.planning.validation import lookup

GIB = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareSpec:
    """One node type: its devices, their memory and compute, and its links."""

    name: str
    gpus_per_node: int
    """Devices per node; one worker process runs per device."""
    gpu_memory_bytes: int
    """Memory of one device."""
    peak_flops: float
    """Peak dense FLOP/s of one device in the profile's dtype."""
    utilisation: float = 0.45
    """Fraction of peak that transformer layers achieve (model FLOPs utilisation)."""
    memory_usable_fraction: float = 0.9
    """Fraction of device memory a stage may plan for; the rest is allocator slack and workspace."""
    intra_node_bandwidth_bytes_per_s: float
    """Device-to-device bandwidth inside a node (NVLink, or shared memory on CPU)."""
    inter_node_bandwidth_bytes_per_s: float
    """Device-to-device bandwidth between nodes (one NIC per device)."""
    tensor_parallel_efficiency: float = 0.9
    """Fraction of linear speed-up kept per doubling of tensor-parallel degree inside a node."""

    def __post_init__(self) -> None:
        if self.gpus_per_node <= 0:
            raise ConfigError(f"hardware {self.name!r}: gpus_per_node must be > 0, got {self.gpus_per_node}")
        positive = (
            "gpu_memory_bytes",
            "peak_flops",
            "intra_node_bandwidth_bytes_per_s",
            "inter_node_bandwidth_bytes_per_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"hardware {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        for name in ("utilisation", "memory_usable_fraction", "tensor_parallel_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(
                    f"hardware {self.name!r}: {name} must be in (0, 1], got {getattr(self, name)}"
                )

    @property
    def usable_memory_bytes(self) -> int:
        """Memory one device offers to a stage's plan."""
        return int(self.gpu_memory_bytes * self.memory_usable_fraction)

    @property
    def achieved_flops(self) -> float:
        return self.peak_flops * self.utilisation

    def tensor_parallel_speedup(self, gpus: int) -> float:
        """Speed-up of one stage spread over ``gpus`` devices of a node (``gpus`` a power of two)."""
        if gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {gpus}")
        return gpus * self.tensor_parallel_efficiency ** math.log2(gpus)


HARDWARE: dict[str, HardwareSpec] = {
    spec.name: spec
    for spec in (
        HardwareSpec(
            name="a100-40",
            gpus_per_node=8,
            gpu_memory_bytes=40 * GIB,
            peak_flops=312e12,
            intra_node_bandwidth_bytes_per_s=300e9,
            inter_node_bandwidth_bytes_per_s=25e9,
        ),
        HardwareSpec(
            name="a100-80",
            gpus_per_node=8,
            gpu_memory_bytes=80 * GIB,
            peak_flops=312e12,
            intra_node_bandwidth_bytes_per_s=300e9,
            inter_node_bandwidth_bytes_per_s=25e9,
        ),
        HardwareSpec(
            name="h100",
            gpus_per_node=8,
            gpu_memory_bytes=80 * GIB,
            peak_flops=989e12,
            intra_node_bandwidth_bytes_per_s=450e9,
            inter_node_bandwidth_bytes_per_s=50e9,
        ),
        HardwareSpec(
            name="h200",
            gpus_per_node=8,
            gpu_memory_bytes=141 * GIB,
            peak_flops=989e12,
            intra_node_bandwidth_bytes_per_s=450e9,
            inter_node_bandwidth_bytes_per_s=50e9,
        ),
        # One CPU worker process per "node": the runtime's local cluster on a laptop or CI box.
        HardwareSpec(
            name="cpu",
            gpus_per_node=1,
            gpu_memory_bytes=8 * GIB,
            peak_flops=100e9,
            utilisation=0.3,
            intra_node_bandwidth_bytes_per_s=5e9,
            inter_node_bandwidth_bytes_per_s=1e9,
        ),
    )
}


def get_hardware(name: str) -> HardwareSpec:
    """Look up a catalogue entry by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    return lookup(HARDWARE, name, "hardware")
