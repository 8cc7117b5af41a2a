"""The cost model: stage latency and memory, 1F1B step time, gradient sync and recovery time.

This is the one place where costs are defined. The template search (``templates``), the simulator
and the notebooks all call these functions, so a plan's predicted numbers never disagree between them.

Assumptions:
    * A stage of layers ``[first, end)`` on ``gpus`` devices of one node runs tensor parallel: its
      compute shrinks by ``hardware.tensor_parallel_speedup(gpus)`` and its bytes split evenly.
    * Sending a microbatch to the next stage costs ``output_bytes`` forward and the same again for
      the gradient coming back, over NVLink inside a node or the NIC between nodes.
    * Under 1F1B the stage ``k``-th from the end of a pipeline (last stage: ``k = 1``) keeps ``k``
      microbatches of activations alive, because every pipeline runs at least as many microbatches
      as it has stages.
    * Recovery phases run one after another; see :class:`RecoveryConstants` for each phase's model.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import numpy as np

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, Plan, Transfer
from oobleck.planning.profile import ModelProfile

SendKind = Literal["none", "intra", "inter"]
FailureKind = Literal["disconnect", "hang"]
_SEND_KINDS: tuple[str, ...] = ("none", "intra", "inter")


@dataclass(frozen=True, slots=True)
class LayerTables:
    """Prefix sums of a profile's per-layer costs, so any layer range costs O(1) (and vectorises).

    Entry ``k`` of a ``*_prefix`` array is the sum over layers ``0 .. k-1``; the range ``[i, j)`` is
    ``prefix[j] - prefix[i]``. Byte sums are int64 so memory checks are exact. The arrays are shared
    through a cache and are read-only.
    """

    compute_prefix_s: np.ndarray
    """Forward + backward seconds, shape ``(L + 1,)``, float64."""
    state_prefix_bytes: np.ndarray
    """Parameter + gradient + optimizer bytes, shape ``(L + 1,)``, int64."""
    activation_prefix_bytes: np.ndarray
    """Activation bytes saved per microbatch in flight, shape ``(L + 1,)``, int64."""
    grad_prefix_bytes: np.ndarray
    """Gradient bytes (what the cross-pipeline all-reduce moves), shape ``(L + 1,)``, int64."""
    output_bytes: np.ndarray
    """Bytes each layer sends to the next stage per microbatch, shape ``(L,)``, int64."""

    @property
    def num_layers(self) -> int:
        return len(self.output_bytes)

    def memory_bytes(self, first: int, end: int, gpus: int, in_flight: int) -> int:
        """:func:`stage_memory_bytes` without the profile lookup, for hot loops."""
        _check_range(self, first, end)
        state = int(self.state_prefix_bytes[end] - self.state_prefix_bytes[first])
        activations = int(self.activation_prefix_bytes[end] - self.activation_prefix_bytes[first])
        return (state + in_flight * activations) // gpus


_TABLES_CACHE: dict[int, tuple[ModelProfile, LayerTables]] = {}
_TABLES_CACHE_SIZE = 32
_TABLES_LOCK = threading.Lock()


def layer_tables(profile: ModelProfile) -> LayerTables:
    """Prefix-sum tables of ``profile``, cached per profile object.

    NOTE: the cache is keyed by ``id`` and keeps the profile alive, so an id cannot be reused while
    its entry exists; hashing a frozen profile would cost O(layers) on every call of a hot loop.

    Args:
        profile: The model's per-layer costs.

    Returns:
        Read-only prefix sums; every cost function of this module reads them, so a vectorised caller
        (the template search) gets bit-identical numbers to the scalar functions.
    """
    cached = _TABLES_CACHE.get(id(profile))
    if cached is not None and cached[0] is profile:
        return cached[1]
    tables = _build_tables(profile)
    with _TABLES_LOCK:
        if len(_TABLES_CACHE) >= _TABLES_CACHE_SIZE:
            del _TABLES_CACHE[next(iter(_TABLES_CACHE))]
        _TABLES_CACHE[id(profile)] = (profile, tables)
    return tables


def _build_tables(profile: ModelProfile) -> LayerTables:
    def prefix(values: list[Any], dtype: type) -> np.ndarray:
        array = np.array([0, *accumulate(values)], dtype=dtype)
        array.flags.writeable = False
        return array

    layers = profile.layers
    output = np.array([layer.output_bytes for layer in layers], dtype=np.int64)
    output.flags.writeable = False
    return LayerTables(
        compute_prefix_s=prefix([layer.compute_s for layer in layers], np.float64),
        state_prefix_bytes=prefix([layer.state_bytes for layer in layers], np.int64),
        activation_prefix_bytes=prefix([layer.activation_bytes for layer in layers], np.int64),
        grad_prefix_bytes=prefix([layer.grad_bytes for layer in layers], np.int64),
        output_bytes=output,
    )


def send_bandwidth_bytes_per_s(hardware: HardwareSpec, send: SendKind) -> float:
    """Link bandwidth a stage boundary of kind ``send`` uses (``inf`` for ``"none"``).

    Raises:
        ValueError: ``send`` is not one of ``"none"``, ``"intra"``, ``"inter"``.
    """
    if send == "none":
        return math.inf
    if send == "intra":
        return hardware.intra_node_bandwidth_bytes_per_s
    if send == "inter":
        return hardware.inter_node_bandwidth_bytes_per_s
    raise ValueError(f"send must be one of {_SEND_KINDS}, got {send!r}")


def send_s(output_bytes: Any, bandwidth_bytes_per_s: float) -> Any:
    """Seconds to send an activation forward and receive its gradient back (scalar or array).

    Args:
        output_bytes: Bytes the stage's last layer outputs per microbatch.
        bandwidth_bytes_per_s: From :func:`send_bandwidth_bytes_per_s`; ``inf`` gives 0.

    Returns:
        ``2 * output_bytes / bandwidth``, of the same shape as ``output_bytes``.
    """
    return 2 * output_bytes / bandwidth_bytes_per_s


def combine_latency_s(compute_s: Any, speedup: float, send_seconds: Any) -> Any:
    """Stage latency from its parts; shared by the scalar and vectorised paths so both round alike."""
    return compute_s / speedup + send_seconds


def stage_latency_s(  # noqa: PLR0917 - the planning API contract fixes this positional signature
    profile: ModelProfile, hardware: HardwareSpec, first: int, end: int, gpus: int, send: SendKind
) -> float:
    """Forward + backward time of one microbatch on a stage, including the send to the next stage.

    Args:
        profile: Per-layer costs.
        hardware: Supplies the tensor-parallel speed-up and the link bandwidths.
        first: First layer of the stage.
        end: One past the stage's last layer.
        gpus: Devices of one node the stage is spread over (a power of two).
        send: Kind of link to the next stage; ``"none"`` for a pipeline's last stage.

    Returns:
        Seconds per microbatch.

    Raises:
        ValueError: the layer range is empty or out of bounds, or ``send`` is unknown.
    """
    tables = layer_tables(profile)
    _check_range(tables, first, end)
    compute = tables.compute_prefix_s[end] - tables.compute_prefix_s[first]
    bandwidth = send_bandwidth_bytes_per_s(hardware, send)
    sent = send_s(tables.output_bytes[end - 1], bandwidth)
    return float(combine_latency_s(compute, hardware.tensor_parallel_speedup(gpus), sent))


def stage_memory_bytes(profile: ModelProfile, first: int, end: int, gpus: int, in_flight: int) -> int:
    """Peak bytes per device of a stage: its state plus the activations of its microbatches in flight.

    Args:
        profile: Per-layer costs.
        first: First layer of the stage.
        end: One past the stage's last layer.
        gpus: Devices the stage's bytes are split over.
        in_flight: Microbatches whose activations the stage holds at once (``k`` for the stage
            ``k``-th from the end under 1F1B).

    Returns:
        ``(state + in_flight * activations) // gpus``.

    Raises:
        ValueError: the layer range is empty or out of bounds.
    """
    return layer_tables(profile).memory_bytes(first, end, gpus, in_flight)


def gradient_sync_s(pipelines: Sequence[Pipeline], profile: ModelProfile, hardware: HardwareSpec) -> float:
    """Time of the cross-pipeline gradient all-reduce at the end of a step.

    Every layer's replicas form one data-parallel group and all groups reduce concurrently, each
    device over its own NIC, so the slowest group is the one whose device holds the most gradient
    bytes. A ring all-reduce over ``p`` members moves ``2 (p - 1) / p`` times the buffer.

    Args:
        pipelines: The plan's pipelines.
        profile: Per-layer costs (gradient bytes).
        hardware: Supplies the inter-node bandwidth.

    Returns:
        Seconds; 0 for a single pipeline.
    """
    count = len(pipelines)
    if count <= 1:
        return 0.0
    grads = layer_tables(profile).grad_prefix_bytes
    # NOTE: pipelines share template objects; the max over each distinct one is the same max.
    templates = {id(pipeline.template): pipeline.template for pipeline in pipelines}
    largest = max(
        int(grads[stage.end_layer] - grads[stage.first_layer]) // stage.gpus
        for template in templates.values()
        for stage in template.stages
    )
    return 2 * (count - 1) / count * largest / hardware.inter_node_bandwidth_bytes_per_s


def plan_iteration_time_s(
    pipelines: Sequence[Pipeline], profile: ModelProfile, hardware: HardwareSpec
) -> float:
    """Predicted step time: the slowest pipeline's 1F1B time plus the gradient all-reduce.

    Args:
        pipelines: The plan's pipelines, each with its microbatch count.
        profile: Per-layer costs.
        hardware: Node type.

    Returns:
        Seconds per training step.
    """
    slowest = max(pipeline.iteration_time_s for pipeline in pipelines)
    return slowest + gradient_sync_s(pipelines, profile, hardware)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryConstants:
    """Every constant of the recovery and restart cost models, in one documented place.

    The simulator loads these from its ``--costs`` file (:meth:`from_dict`, :meth:`load`) and the
    runtime's measured phases can be compared against the same names.
    """

    heartbeat_interval_s: float = 0.5
    """Seconds between agent heartbeats; 0.5 s keeps control traffic negligible at 1000s of nodes."""
    missed_heartbeats: int = 3
    """Heartbeats missed before a silent (hung) node is declared dead; 3 rides out one slow GC or
    network blip without a false positive. A hang is detected after ``interval * missed``."""
    disconnect_detect_s: float = 0.1
    """Seconds to notice a TCP disconnect or a worker exit under a live agent: one round trip plus the
    agent's child-process poll (50 ms), rounded up."""
    plan_s: float = 0.05
    """Seconds to compute the new plan: templates are precomputed, so reconfiguration is a lookup
    plus the batch split, tens of milliseconds in Python for ~100 nodes."""
    rebuild_groups_fixed_s: float = 1.0
    """Fixed part of rebuilding process groups: destroying the old ones and one rendezvous barrier
    of all workers through the store."""
    rebuild_groups_per_group_s: float = 0.05
    """Seconds to create one process group (communicator set-up); groups are created one after
    another because every rank must create every group in the same order."""
    transfer_bandwidth_bytes_per_s: float | None = None
    """Bytes per second one node sends or receives while copying layer state; ``None`` takes the
    hardware's inter-node bandwidth times its devices per node (every device has its own NIC and a
    node's layers are spread over its devices)."""
    restart_s: float = 120.0
    """Checkpoint-restart fallback: seconds to relaunch every worker (interpreter, torch import,
    device and communicator initialisation, model build) before the checkpoint is read."""
    checkpoint_load_bandwidth_bytes_per_s: float = 2e9
    """Bytes per second one node reads a checkpoint from shared storage (a typical parallel
    filesystem share per client)."""
    checkpoint_save_bandwidth_bytes_per_s: float = 1e9
    """Bytes per second one node writes a checkpoint; writes are slower than reads on most shared
    filesystems."""

    def __post_init__(self) -> None:
        if isinstance(self.missed_heartbeats, bool) or not isinstance(self.missed_heartbeats, int):
            raise ConfigError(f"costs: missed_heartbeats must be an integer, got {self.missed_heartbeats!r}")
        if self.missed_heartbeats < 1:
            raise ConfigError(f"costs: missed_heartbeats must be >= 1, got {self.missed_heartbeats}")
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "missed_heartbeats" or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"costs: {item.name} must be a finite number, got {value!r}")
            must_be_positive = item.name.endswith("bytes_per_s") or item.name == "heartbeat_interval_s"
            if value < 0 or (must_be_positive and value == 0):
                rule = "> 0" if must_be_positive else ">= 0"
                raise ConfigError(f"costs: {item.name} must be {rule}, got {value!r}")

    def detect_s(self, failure: FailureKind) -> float:
        """Seconds from a failure to its detection.

        Args:
            failure: ``"disconnect"`` (TCP reset, process exit: noticed at once) or ``"hang"``
                (noticed only when heartbeats stop).

        Raises:
            ValueError: unknown ``failure``.
        """
        if failure == "disconnect":
            return self.disconnect_detect_s
        if failure == "hang":
            return self.heartbeat_interval_s * self.missed_heartbeats
        raise ValueError(f"failure must be 'disconnect' or 'hang', got {failure!r}")

    def transfer_bandwidth(self, hardware: HardwareSpec) -> float:
        """Per-node state-copy bandwidth: the override, or inter-node bandwidth times devices."""
        if self.transfer_bandwidth_bytes_per_s is not None:
            return self.transfer_bandwidth_bytes_per_s
        return hardware.inter_node_bandwidth_bytes_per_s * hardware.gpus_per_node

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "costs") -> RecoveryConstants:
        """Build from a mapping; missing keys keep their defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected an object of cost constants, got {type(data).__name__}")
        known = [item.name for item in fields(cls)]
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(known)}")
        try:
            return cls(**dict(data))
        except ConfigError as error:
            raise ConfigError(f"{source}: {str(error).removeprefix('costs: ')}") from None

    @classmethod
    def load(cls, path: str | Path) -> RecoveryConstants:
        """Read constants from a JSON object file (the simulator's ``--costs``).

        Raises:
            ConfigError: missing file, invalid JSON, unknown key or bad value.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: cost constants file not found") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        return cls.from_dict(data, source=str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPrediction:
    """Predicted seconds of each recovery phase, named as the runtime records its measurements."""

    detect_s: float
    plan_s: float
    rebuild_groups_s: float
    transfer_state_s: float
    first_step_s: float

    @property
    def total_s(self) -> float:
        return self.detect_s + self.plan_s + self.rebuild_groups_s + self.transfer_state_s + self.first_step_s

    def to_dict(self) -> dict[str, float]:
        """Phase name -> seconds, plus ``"total"``."""
        return {
            "detect": self.detect_s,
            "plan": self.plan_s,
            "rebuild_groups": self.rebuild_groups_s,
            "transfer_state": self.transfer_state_s,
            "first_step": self.first_step_s,
            "total": self.total_s,
        }


def process_group_count(plan: Plan) -> int:
    """Process groups the runtime builds for ``plan``.

    One data-parallel group per distinct tuple of layer holders (layers whose replicas live on the
    same nodes share a group; none with a single pipeline) plus one point-to-point group per stage
    boundary of every pipeline.
    """
    p2p = sum(pipeline.template.num_stages - 1 for pipeline in plan.pipelines)
    if len(plan.pipelines) <= 1:
        return p2p
    num_layers = plan.pipelines[0].template.num_layers
    # NOTE: nodes are distinct within a plan, so two layers have equal holder tuples exactly when
    # every pipeline maps them to the same template node index; pipelines that share a template
    # map alike, so one column per distinct template decides it (instead of every pipeline).
    templates = {id(pipeline.template): pipeline.template for pipeline in plan.pipelines}
    columns = [template.layout.node_of_layer[:num_layers] for template in templates.values()]
    return p2p + len(set(zip(*columns, strict=True)))


def predict_recovery(
    new_plan: Plan,
    transfers: Sequence[Transfer],
    hardware: HardwareSpec,
    constants: RecoveryConstants | None = None,
    *,
    failure: FailureKind = "disconnect",
) -> RecoveryPrediction:
    """Predict the phases of a recovery that moves to ``new_plan`` by copying ``transfers``.

    Args:
        new_plan: The plan after reconfiguration; its step time is the first step's cost.
        transfers: Layer-state copies; copies from distinct nodes run in parallel, so the phase
            lasts as long as the busiest node's larger direction (bytes sent or received).
        hardware: Node type (default transfer bandwidth).
        constants: Cost constants; ``None`` uses the defaults.
        failure: How the failure showed itself (see :meth:`RecoveryConstants.detect_s`).

    Returns:
        Seconds per phase.
    """
    constants = constants or RecoveryConstants()
    sent: dict[int, int] = {}
    received: dict[int, int] = {}
    for transfer in transfers:
        if transfer.src_node == transfer.dst_node:
            continue
        sent[transfer.src_node] = sent.get(transfer.src_node, 0) + transfer.bytes
        received[transfer.dst_node] = received.get(transfer.dst_node, 0) + transfer.bytes
    busiest = max([*sent.values(), *received.values()], default=0)
    groups = process_group_count(new_plan)
    return RecoveryPrediction(
        detect_s=constants.detect_s(failure),
        plan_s=constants.plan_s,
        rebuild_groups_s=constants.rebuild_groups_fixed_s + groups * constants.rebuild_groups_per_group_s,
        transfer_state_s=busiest / constants.transfer_bandwidth(hardware),
        first_step_s=new_plan.iteration_time_s,
    )


def _check_range(tables: LayerTables, first: int, end: int) -> None:
    if not 0 <= first < end <= tables.num_layers:
        raise ValueError(f"layer range [{first}, {end}) must be non-empty inside 0..{tables.num_layers}")
