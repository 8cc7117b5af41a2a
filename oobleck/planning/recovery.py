"""Recovery-time prediction: what moving to a new plan costs, phase by phase.

The simulator charges these predictions for every reconfiguration and the runtime records its
measured recoveries under the same phase names (detect, plan, rebuild groups, transfer state, first
step after), so a prediction can be checked against a measurement.

Assumptions:
    * Recovery phases run one after another; see :class:`RecoveryConstants` for each phase's model.
    * Layer-state copies from distinct nodes run in parallel; a node sends and receives at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from oobleck.errors import ConfigError
from oobleck.planning.groups import plan_group_shape
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan, Transfer
from oobleck.planning.validation import check_number, constants_from_mapping, read_json_file

FailureKind = Literal["disconnect", "hang"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryConstants:
    """Every constant of the recovery and restart cost models, in one documented place.

    The simulator loads these from its ``--costs`` file (:meth:`from_dict`, :meth:`load`) and the
    runtime's measured phases can be compared against the same names.
    """

    heartbeat_interval_s: float = 0.5
    """Seconds between agent heartbeats: the runtime's default (``MasterConfig.heartbeat_interval_s``
    in ``runtime/control/master.py``); 0.5 s keeps control traffic negligible at 1000s of nodes."""
    missed_heartbeats: int = 3
    """Heartbeats missed before a silent (hung) node is declared dead: the runtime's default
    (``MasterConfig.missed_heartbeats``). A hang is detected after ``interval * missed``; the master
    checks every ``interval / 4``, which adds at most 0.125 s (not modelled)."""
    disconnect_detect_s: float = 0.1
    """Seconds to notice a TCP disconnect or a worker exit under a live agent: one round trip plus the
    agent's child-process poll (every 50 ms in ``runtime/control/agent.py``), rounded up."""
    plan_s: float = 0.05
    """Seconds to compute the new plan: templates are precomputed, so reconfiguration is a lookup
    plus the batch split, tens of milliseconds in Python for ~100 nodes."""
    rebuild_groups_fixed_s: float = 0.03
    """Fixed part of a group rebuild: destroying the old world, the store rendezvous and the wait
    for the last rank (a world all-reduce in the benchmark; the runtime's first step). Measured by
    ``benchmarks/rebuild.py`` on this machine (the median over 4-16 ranks of what the two per-unit
    terms below leave of a rebuild; see docs/assumptions.md)."""
    rebuild_groups_per_rank_s: float = 0.0003
    """Seconds per rank of the world's re-initialisation, which every generation does: a gloo world
    is a full mesh, each rank connects to every other, so this is linear in the world's ranks.
    Measured by ``benchmarks/rebuild.py``: slope of the busiest rank's CPU seconds in
    ``init_process_group`` over 4-16 ranks (0.31 ms per peer). Its wall seconds on this 2-core
    machine grow ~27x faster because the 16 ranks take turns on two cores, which a rank with its own
    core does not; NCCL's bootstrap is not measured here and is priced by the same law."""
    rebuild_groups_per_group_s: float = 0.02
    """Seconds to create one process group (its members connect to each other). Groups are created
    in rounds of disjoint groups (:mod:`oobleck.planning.groups`), so a rebuild pays this once per
    round, not once per group. Measured by ``benchmarks/rebuild.py``: median over 4-16 ranks of the
    group phase divided by its rounds (groups of 2-4 members; contention on this machine included)."""
    transfer_bandwidth_bytes_per_s: float | None = None
    """Bytes per second one node sends or receives while copying layer state; ``None`` takes the
    hardware's inter-node bandwidth times its devices per node (every device has its own NIC and a
    node's layers are spread over its devices)."""
    transfer_latency_s: float = 0.0
    """Seconds a recovery's copies cost beyond their bytes, paid once when anything is copied:
    posting the receives and each pair's first message. Negligible next to gigabytes of layer
    state on a cluster (the default), but at the sizes of a tiny test model it is most of the phase:
    notebook 03 measures 1.5-7 ms for copies of 0.2-0.9 MB over loopback gloo, barely growing with
    the bytes."""
    restart_s: float = 120.0
    """Checkpoint-restart fallback: seconds to relaunch every worker (interpreter, torch import,
    device initialisation, model build) before the checkpoint is read; the restarted world's groups
    cost :func:`rebuild_groups_s` on top (see :meth:`restart_groups_s`)."""
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
            positive = item.name.endswith("bytes_per_s") or item.name == "heartbeat_interval_s"
            check_number(item.name, value, positive=positive, source="costs")

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

    def restart_groups_s(self, ranks: int, rounds: int) -> float:
        """Seconds a checkpoint restart of ``ranks`` workers spends building its world and groups."""
        return rebuild_groups_s(self, ranks, rounds)

    def transfer_bandwidth(self, hardware: HardwareSpec) -> float:
        """Per-node state-copy bandwidth: the override, or inter-node bandwidth times devices."""
        if self.transfer_bandwidth_bytes_per_s is not None:
            return self.transfer_bandwidth_bytes_per_s
        return hardware.inter_node_bandwidth_bytes_per_s * hardware.gpus_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "costs") -> RecoveryConstants:
        """Build from a mapping; missing keys keep their defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        expected = "an object of cost constants"
        return constants_from_mapping(cls, data, source=source, expected=expected, prefix="costs: ")

    @classmethod
    def load(cls, path: str | Path) -> RecoveryConstants:
        """Read constants from a JSON object file (the simulator's ``--costs``).

        Raises:
            ConfigError: missing or unreadable file, invalid JSON, unknown key or bad value.
        """
        path = Path(path)
        return cls.from_dict(read_json_file(path, "cost constants"), source=str(path))


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


def rebuild_groups_s(constants: RecoveryConstants, ranks: int, rounds: int) -> float:
    """Seconds to rebuild the process groups of a generation of ``ranks`` ranks.

    The runtime re-initialises the whole world (linear in its ranks) and then creates the plan's
    groups in ``rounds`` rounds of disjoint groups (:func:`~oobleck.planning.groups.plan_group_shape`).

    Args:
        constants: The cost constants.
        ranks: Workers of the new generation (nodes times devices per node).
        rounds: Group-creation rounds of the new plan.

    Returns:
        ``fixed + per_rank * ranks + per_group * rounds``.
    """
    return (
        constants.rebuild_groups_fixed_s
        + constants.rebuild_groups_per_rank_s * ranks
        + constants.rebuild_groups_per_group_s * rounds
    )


def plan_ranks(plan: Plan) -> int:
    """Workers of the runtime's world for ``plan``: every member node (spares too) times its devices."""
    gpus_per_node = plan.pipelines[0].template.gpus_per_node if plan.pipelines else 1
    return len(plan.nodes) * gpus_per_node


def predict_recovery(
    new_plan: Plan,
    transfers: Sequence[Transfer],
    hardware: HardwareSpec,
    constants: RecoveryConstants | None = None,
    *,
    failure: FailureKind = "disconnect",
    first_step_s: float | None = None,
    tied_pairs: Sequence[tuple[int, int]] = (),
    group_rounds: int | None = None,
) -> RecoveryPrediction:
    """Predict the phases of a recovery that moves to ``new_plan`` by copying ``transfers``.

    Args:
        new_plan: The plan after reconfiguration; its step time is the first step's cost unless
            ``first_step_s`` says otherwise.
        transfers: Layer-state copies; copies from distinct nodes run in parallel, so the phase
            lasts the copies' latency plus the busiest node's larger direction (bytes sent or
            received) over the bandwidth.
        hardware: Node type (default transfer bandwidth).
        constants: Cost constants; ``None`` uses the defaults.
        failure: How the failure showed itself (see :meth:`RecoveryConstants.detect_s`).
        first_step_s: The first step's cost when the job's steps are priced by calibrated
            constants (:meth:`~oobleck.planning.step_time.StepConstants.step_s`).
        tied_pairs: ``(source, tied)`` layers of tied weights, whose groups the runtime builds too.
        group_rounds: ``plan_group_shape(new_plan, tied_pairs).rounds`` when the caller already knows
            it (the planner memoises it along chains of reconfigurations).

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
    if group_rounds is None:
        group_rounds = plan_group_shape(new_plan, tied_pairs).rounds
    return RecoveryPrediction(
        detect_s=constants.detect_s(failure),
        plan_s=constants.plan_s,
        rebuild_groups_s=rebuild_groups_s(constants, plan_ranks(new_plan), group_rounds),
        transfer_state_s=constants.transfer_latency_s + busiest / constants.transfer_bandwidth(hardware)
        if busiest
        else 0.0,
        first_step_s=new_plan.iteration_time_s if first_step_s is None else first_step_s,
    )
