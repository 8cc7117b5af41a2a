"""Devices per node: what the agents' slots must be, and the plan's ``gpus_per_node`` they give.

Assumptions:
- One worker per slot, one device per worker (torchrun's convention: every GPU of the node is
  visible to every worker and a worker uses ``cuda:LOCAL_RANK``).
- Nodes are homogeneous (the planning core prices one node type per job): every agent of a job
  has the same slots, checked at registration by the membership machine.
- A GPU hardware entry names a real node type, so its ``gpus_per_node`` (8 in the catalogue) is a
  fact the agents must match unless the job overrides it; the ``cpu`` entry is a laptop or CI box
  whose "devices" are processes, so there the agents' slots decide.
"""

from __future__ import annotations

from typing import Literal

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HARDWARE

Launch = Literal["agent", "torchrun"]
"""Who started a node's workers: an oobleck agent (hostfile slots) or torchrun (``--nproc-per-node``)."""

CPU_HARDWARE = "cpu"
"""The hardware entry whose devices per node follow the agents' slots."""


def required_slots(hardware: str, gpus_per_node: int | None) -> int | None:
    """The slots every agent of a job must have, or None when any (homogeneous) count is fine.

    Args:
        hardware: The job's hardware entry name (validated by the job config).
        gpus_per_node: The job's ``gpus_per_node`` override, or None.

    Returns:
        The override if set; else None on ``cpu``; else the entry's ``gpus_per_node``.
    """
    if gpus_per_node is not None:
        return gpus_per_node
    if hardware == CPU_HARDWARE:
        return None
    return HARDWARE[hardware].gpus_per_node


def slots_refusal(
    slots: int, hardware: str, gpus_per_node: int | None, *, launcher: Launch = "agent"
) -> str | None:
    """Why a node of ``slots`` workers cannot join this job, or None when it can.

    Args:
        slots: The registering agent's slots (or torchrun's ``LOCAL_WORLD_SIZE``).
        hardware: The job's hardware entry name.
        gpus_per_node: The job's ``gpus_per_node`` override, or None.
        launcher: Who started the workers, for the fix the message names.

    Returns:
        One line naming the mismatch and both fixes, or None.
    """
    required = required_slots(hardware, gpus_per_node)
    if required is None or slots == required:
        return None
    source = (
        f"the job's gpus_per_node={gpus_per_node}"
        if gpus_per_node is not None
        else f"hardware {hardware!r} has gpus_per_node={required}"
    )
    if launcher == "torchrun":
        return (
            f"environment LOCAL_WORLD_SIZE={slots} but {source}; launch {required} processes per node "
            f"(torchrun --nproc-per-node {required}) or set gpus_per_node: {slots} in the job"
        )
    return (
        f"agent has slots={slots} but {source}; start agents with slots={required} "
        f"(hostfile 'HOST slots={required}') or set gpus_per_node: {slots} in the job"
    )


def node_devices(slots: int, hardware: str, gpus_per_node: int | None, *, launcher: Launch = "agent") -> int:
    """The plan's ``gpus_per_node`` for nodes of ``slots`` workers.

    Args:
        slots: Workers per node (the membership's ``slots``, or torchrun's ``LOCAL_WORLD_SIZE``).
        hardware: The job's hardware entry name.
        gpus_per_node: The job's ``gpus_per_node`` override, or None.
        launcher: Who started the workers, for the fix an error names.

    Returns:
        ``slots`` (checked against the entry or override).

    Raises:
        ConfigError: the slots do not match the hardware entry or the override.
    """
    refusal = slots_refusal(slots, hardware, gpus_per_node, launcher=launcher)
    if refusal is not None:
        raise ConfigError(refusal)
    return slots
