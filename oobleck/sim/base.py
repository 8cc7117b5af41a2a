"""The policy interface: what a fault-tolerance scheme decides, separate from how time passes.

The simulated job (:mod:`oobleck.sim.job`) owns the clock and the accounting; a :class:`Policy`
only answers four questions: what to run on these nodes (:meth:`Policy.configure`), what to do when
nodes are lost (:meth:`Policy.on_loss`), when and how to take joined nodes (:meth:`Policy.on_join`),
and how often to checkpoint. Every answer is priced by the planning core's cost model and the
constants of :class:`~oobleck.sim.costs.SimCosts`, so all policies are charged from one place.

Assumptions:
    * Between two answers the configuration's throughput is constant (steps of equal length).
    * A policy is deterministic: the same context and the same calls give the same answers.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from oobleck.errors import PlanningError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
from oobleck.planning.profile import ModelProfile
from oobleck.sim.costs import SimCosts, checkpoint_stall_s, restart_s

if TYPE_CHECKING:
    from oobleck.planning.planner import Planner

Rollback = Literal["none", "iteration", "checkpoint"]
JoinPoint = Literal["step", "checkpoint"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext:
    """Everything a policy may read: the job, the cluster and the cost constants."""

    profile: ModelProfile
    hardware: HardwareSpec
    planner: Planner
    """The planning core's facade, shared by all policies (templates are generated once)."""
    costs: SimCosts
    node_fail_rate_per_s: float
    """Configured independent failures per node per second (never measured on the trace)."""
    rack_size: int = 0
    """Nodes per rack (0: no rack failures)."""
    rack_fail_rate_per_s: float = 0.0
    """Configured whole-rack failures per rack per second."""
    fault_tolerance: int
    """f, as given to the planner."""
    global_microbatches: int
    """B, as given to the planner; never changes."""
    microbatch_size: int
    checkpoint_bytes: int
    """Bytes of one checkpoint (:func:`oobleck.sim.costs.checkpoint_bytes` of the profile)."""

    def step_time_s(self, plan: Plan) -> float:
        """Seconds one step of ``plan`` takes: the planner's price under the step constants of ``costs``."""
        return self.costs.step.step_s(plan, self.profile, self.hardware)

    def mtbf_s(self, num_nodes: int) -> float:
        """Configured mean seconds between interrupts of a job on ``num_nodes`` nodes (``inf``: none).

        Each node fails at the node rate and each rack the job touches (``ceil(n / rack_size)``,
        the job's nodes taken as consecutive ids) at the rack rate.
        """
        racks = math.ceil(num_nodes / self.rack_size) if self.rack_size else 0
        rate = num_nodes * self.node_fail_rate_per_s + racks * self.rack_fail_rate_per_s
        return 1.0 / rate if rate > 0 else math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class Configuration:
    """What a policy runs between two cluster events: a plan and its steady cost."""

    plan: Plan
    step_time_s: float
    """Wall time of one step, the policy's steady overhead included."""
    redundancy_fraction: float = 0.0
    """Fraction of ``step_time_s`` spent on redundant work (Bamboo), reported as overhead."""
    failed: frozenset[int] = frozenset()
    """Nodes of ``plan`` that are down while the rest keeps running around them (Bamboo's failover,
    ReCycle's rerouting): not part of :attr:`nodes`; a later reconfiguration removes them."""
    nodes: tuple[int, ...] = field(init=False)
    """The plan's node ids, sorted (cached: the job reads them on every event)."""
    min_pipeline_nodes: int = field(init=False)
    """Nodes of the smallest pipeline."""
    working_nodes: int = field(init=False)
    """Nodes that run a stage (members less hot spares and failed-over nodes): the checkpoint's
    writers and readers."""

    def __post_init__(self) -> None:
        # NOTE: frozen dataclass; derived fields are computed once here.
        nodes = self.plan.nodes
        if self.failed:
            # NOTE: a few failed nodes out of thousands: delete them by bisection, not by a scan.
            kept = list(nodes)
            for node in sorted(self.failed, reverse=True):
                index = bisect.bisect_left(kept, node)
                if index < len(kept) and kept[index] == node:
                    del kept[index]
            nodes = tuple(kept)
        object.__setattr__(self, "nodes", nodes)
        # NOTE: over distinct templates (cached on the plan), not pipelines: thousands at 16K nodes.
        smallest = min(template.num_nodes for template, _ in self.plan.template_counts)
        object.__setattr__(self, "min_pipeline_nodes", smallest)
        working = len(self.plan.nodes) - len(self.plan.spare_nodes) - len(self.failed)
        object.__setattr__(self, "working_nodes", working)

    def uses(self, node: int) -> bool:
        """Whether ``node`` runs in (or idles as a spare of) this configuration, by bisection.

        NOTE: not a set of the nodes: building one is O(nodes) on every event at 16K nodes.
        """
        index = bisect.bisect_left(self.nodes, node)
        return index < len(self.nodes) and self.nodes[index] == node

    @property
    def samples_per_step(self) -> int:
        return self.plan.global_batch_size

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_step / self.step_time_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """A policy's answer to a membership change."""

    kind: str
    """Label for the results (``"reconfigure"``, ``"restart"``, ``"failover"``, ``"grow"``)."""
    duration_s: float
    """Seconds before training resumes; nothing trains meanwhile."""
    config: Configuration | None
    """What runs afterwards; ``None``: nothing can run on the nodes up, wait for joins."""
    rollback: Rollback
    """Work lost: nothing, the step in flight, or everything since the last checkpoint."""


class Policy(ABC):
    """A fault-tolerance scheme. Subclasses set :attr:`name` and implement the abstract methods."""

    name: ClassVar[str]
    join_at: ClassVar[JoinPoint] = "step"
    """When joined nodes are taken: at the next step boundary, or after the next checkpoint."""
    join_idle: ClassVar[bool] = False
    """Whether nodes that are up but left unused by a recovery are offered to :meth:`on_join` at
    the next join point, as if they had just joined."""
    checkpoint_after_restart: ClassVar[bool] = False
    """Whether a checkpoint is written as soon as a restart completes (Varuna does, so that a new
    shape never has to redo work from before it)."""

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def start(self, nodes: tuple[int, ...]) -> Configuration:
        """The configuration the job starts with (default: :meth:`configure`); called once.

        Args:
            nodes: Node ids up at time 0, sorted.

        Returns:
            The first configuration.

        Raises:
            PlanningError: the policy cannot run this job; it is reported infeasible.
        """
        return self.configure(nodes)

    @abstractmethod
    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        """The configuration this policy runs on exactly these nodes (or a subset it picks).

        Args:
            nodes: Node ids up now, sorted.

        Returns:
            The configuration; its plan's nodes are a subset of ``nodes``.

        Raises:
            PlanningError: nothing can run on these nodes (the job waits, or at the start the
                policy is reported infeasible).
        """

    @abstractmethod
    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """Answer the loss of ``lost`` while running (or recovering into) ``config``.

        Called once per cluster event that removes nodes ``config`` uses, at the instant of the
        event, unless the job is down (nothing runs); losing only unused nodes needs no answer.

        Args:
            config: The configuration running, or the one a recovery in progress leads to.
            lost: The nodes of ``config`` that failed at this instant, sorted, never empty.
            alive: Node ids up after the event, sorted.

        Returns:
            The recovery, or ``None`` to carry on with ``config`` as it is.
        """

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """Take joined nodes at the policy's join point (:attr:`join_at`).

        The default restarts on every node up (losing no work: the join point is a checkpoint or
        step boundary) when that runs faster than ``config``.

        Args:
            config: The configuration running.
            joined: Nodes that joined since the last join point, still up and unused, sorted.
            alive: Node ids up now, sorted.

        Returns:
            The recovery that takes the nodes, or ``None`` to keep ``config``.
        """
        recovery = self.restart(alive, rollback="none")
        if recovery.config is None or not self.pays_back(config, recovery.config, recovery.duration_s):
            return None
        return Recovery(kind="grow", duration_s=recovery.duration_s, config=recovery.config, rollback="none")

    def pays_back(self, old: Configuration, new: Configuration, pause_s: float) -> bool:
        """Whether moving from ``old`` to ``new`` at the cost of ``pause_s`` idle seconds is worth it.

        The rule every elastic policy shares: the samples gained at the new rate over the expected
        time until the next interrupt (the configured MTBF of the new node count) must exceed the
        samples the pause forgoes at the old rate. Without failures any faster configuration pays.
        """
        gain = new.samples_per_s - old.samples_per_s
        if gain <= 0:
            return False
        window_s = self.context.mtbf_s(len(new.nodes))
        return not math.isfinite(window_s) or gain * window_s > old.samples_per_s * pause_s

    def checkpoint_interval_s(self, config: Configuration) -> float:
        """Training seconds between checkpoints (``inf``: never); default: the fallback period."""
        return self.context.costs.fallback_checkpoint_interval_s

    def checkpoint_s(self, config: Configuration) -> float:
        """Seconds one checkpoint stops training: every node writes its shard in parallel."""
        return checkpoint_stall_s(self.context.checkpoint_bytes, self.context.costs, config.working_nodes)

    def restart(self, alive: tuple[int, ...], *, rollback: Rollback = "checkpoint") -> Recovery:
        """Restart every process on ``alive`` and reload the last checkpoint.

        Args:
            alive: Node ids up now, sorted.
            rollback: Work lost by the restart (``"none"`` when it happens at a checkpoint).

        Returns:
            A ``"restart"`` recovery priced by :func:`oobleck.sim.costs.restart_s`, or a ``"wait"``
            without a config when nothing fits on ``alive`` (the job goes down until nodes join).
        """
        try:
            config = self.configure(alive)
        except PlanningError:
            # NOTE: "wait": nothing fits on the nodes up; the job is down until nodes join.
            return Recovery(kind="wait", duration_s=0.0, config=None, rollback=rollback)
        duration = restart_s(self.context.checkpoint_bytes, self.context.costs, config.working_nodes)
        return Recovery(kind="restart", duration_s=duration, config=config, rollback=rollback)

    def affected(self, config: Configuration, lost: tuple[int, ...]) -> tuple[int, ...]:
        """The lost nodes that ``config`` uses (what :meth:`on_loss` is given)."""
        return tuple(node for node in lost if config.uses(node))


def fallback_plan(context: JobContext, nodes: tuple[int, ...]) -> Plan:
    """The planning core's plan on ``nodes`` with the largest fault tolerance they allow (<= f).

    A restart from a checkpoint does not need ``f + 1`` pipelines to be correct, only to be
    resilient, so a cluster shrunk below ``(f + 1) * n0`` nodes still runs with fewer pipelines:
    the runtime's :meth:`~oobleck.planning.planner.Planner.restart_plan`, so both backends restart
    onto the same plan.

    Raises:
        PlanningError: fewer than ``n0`` nodes.
    """
    planner = context.planner
    if len(nodes) < planner.min_nodes:
        raise PlanningError(f"{len(nodes)} nodes are fewer than n0={planner.min_nodes}")
    return planner.restart_plan(nodes)
