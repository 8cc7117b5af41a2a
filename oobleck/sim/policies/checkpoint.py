"""``checkpoint``: plain checkpoint-restart of a fixed-size job (torchelastic / Megatron style).

What it models:

* **A fixed-size job.** The first configuration (the best homogeneous ``depth x width`` on the
  nodes up) fixes how many nodes the job runs on; it never shrinks nor grows. Nodes up but unused
  (``N mod depth`` leftovers, repaired nodes) are its spare pool.
* **A loss waits for a replacement.** When a node in use fails, every process restarts from the
  last checkpoint on the same shape, a spare taking the failed node's place. Without a spare the
  job waits (down) until enough nodes are up again: a repaired node (``--repair-hours``) or any
  node joining in a replayed trace; without repairs it never resumes.
* **Sharded checkpoints.** Every node writes (and on restart reads) a disjoint ``1 / nodes`` share
  at the per-node bandwidth; optionally asynchronously, charged as ``checkpoint_async_overhead_s``.
* **Daly's period.** Checkpoints every :func:`~oobleck.sim.costs.daly_interval_s` of the
  *configured* MTBF of the job's nodes (``--fail-rate``/``--rack-fail-rate`` or ``--mtbf-hours``),
  never of the trace being replayed; ``checkpoint_interval_s`` overrides it.

What it leaves out: the scheduler's time to notice and allocate a spare (it is the restart cost),
checkpoint corruption, failures of the storage system, and a restart that itself fails part-way
other than by a further node loss (which the job handles as another loss).
"""

from __future__ import annotations

from oobleck.errors import PlanningError
from oobleck.sim.base import Configuration, JobContext, Policy, Recovery
from oobleck.sim.costs import checkpoint_save_s, daly_interval_s
from oobleck.sim.policies.homogeneous import HomogeneousPlanner


class CheckpointPolicy(Policy):
    """Restart-all from the last checkpoint on a loss, on the same fixed shape, spares replacing."""

    name = "checkpoint"
    join_at = "checkpoint"

    def __init__(self, context: JobContext, homogeneous: HomogeneousPlanner) -> None:
        super().__init__(context)
        self.homogeneous = homogeneous
        self.shape: tuple[int, int] | None = None
        """(depth, width) of the fixed-size job, set by the first configuration."""

    def start(self, nodes: tuple[int, ...]) -> Configuration:
        depth = self.homogeneous.best_depth(len(nodes))
        self.shape = (depth, self.homogeneous.width(depth, len(nodes)))
        return self.configure(nodes)

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        """The fixed shape on the lowest node ids up (spares fill in for failed nodes).

        Raises:
            PlanningError: fewer nodes are up than the fixed-size job needs (it waits).
        """
        assert self.shape is not None  # NOTE: start() runs first.
        depth, width = self.shape
        if len(nodes) < depth * width:
            raise PlanningError(
                f"the fixed-size job needs {depth * width} nodes ({width} x {depth}-node pipelines), "
                f"{len(nodes)} are up and no spare is left"
            )
        plan = self.homogeneous.plan(nodes[: depth * width], depth)
        return Configuration(plan=plan, step_time_s=self.context.step_time_s(plan))

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        return self.restart(alive)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """A fixed-size job never grows: joined nodes only refill the spare pool."""
        return None

    def checkpoint_interval_s(self, config: Configuration) -> float:
        costs = self.context.costs
        if costs.checkpoint_interval_s is not None:
            return costs.checkpoint_interval_s
        interval = daly_interval_s(self.checkpoint_s(config), self.context.mtbf_s(len(config.nodes)))
        if costs.checkpoint_async_overhead_s is not None:
            # NOTE: an asynchronous write must finish before the next one starts.
            write_s = checkpoint_save_s(self.context.checkpoint_bytes, costs, config.working_nodes)
            interval = max(interval, write_s)
        return interval
