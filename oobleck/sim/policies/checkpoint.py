"""``checkpoint``: torchelastic-style restart-all from periodic checkpoints.

Training checkpoints every Young/Daly period ``tau = sqrt(2 C MTBF)`` (``C``: one checkpoint's
cost, MTBF: the whole cluster's mean time between failures) unless ``--costs`` fixes it. Any loss
of a node in use restarts every process on the nodes still up, reloads the last checkpoint and redoes
the work since. The job keeps the pipeline depth it started with and shrinks or grows only its
data-parallel width (a torchelastic job keeps its parallel layout; only the world size changes).
Joined nodes are taken at the next checkpoint, by a restart that loses no work.
"""

from __future__ import annotations

from oobleck.errors import PlanningError
from oobleck.sim.base import Configuration, JobContext, Policy, Recovery
from oobleck.sim.costs import young_daly_interval_s
from oobleck.sim.policies.homogeneous import HomogeneousPlanner


class CheckpointPolicy(Policy):
    """Restart-all on any failure; fixed pipeline depth, data-parallel width follows the nodes."""

    name = "checkpoint"
    join_at = "checkpoint"

    def __init__(self, context: JobContext, homogeneous: HomogeneousPlanner) -> None:
        super().__init__(context)
        self.homogeneous = homogeneous
        self.depth: int | None = None

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        plan = self.homogeneous.plan(nodes, self.depth_for(len(nodes)))
        return Configuration(plan=plan, step_time_s=self.context.step_time_s(plan))

    def depth_for(self, num_nodes: int) -> int:
        """Pipeline depth on ``num_nodes`` nodes: the one chosen for the first configuration.

        Raises:
            PlanningError: no pipeline fits on ``num_nodes`` nodes.
        """
        if self.depth is None:
            self.depth = self.homogeneous.best_depth(num_nodes)
        return self.depth

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """Restart onto the joined nodes only when they change the depth or add a pipeline."""
        try:
            depth = self.depth_for(len(alive))
        except PlanningError:
            return None
        shape = (depth, self.homogeneous.width(depth, len(alive)))
        if shape == (config.plan.pipelines[0].template.num_nodes, len(config.plan.pipelines)):
            return None
        return super().on_join(config, joined, alive)

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        return self.restart(alive)

    def checkpoint_interval_s(self, config: Configuration) -> float:
        if self.context.costs.checkpoint_interval_s is not None:
            return self.context.costs.checkpoint_interval_s
        return young_daly_interval_s(self.checkpoint_s(config), self.context.mtbf_s)
