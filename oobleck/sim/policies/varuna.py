"""``varuna``: job morphing (Varuna, Athlur et al., EuroSys'22).

What it models:

* **Morphing on every restart.** A loss restarts every process from the last checkpoint on the
  nodes up, with the ``PP x DP`` shape (pipeline depth x data-parallel width, identical pipelines)
  that maximises *expected goodput*: the shape's throughput times Daly's expected fraction of time
  kept (:func:`~oobleck.sim.costs.daly_goodput`), which charges that shape's own checkpoint
  cost, restart cost (relaunch + sharded reload) and interrupt rate (more nodes fail more often).
  Raw step time alone would ignore that a wider job checkpoints faster but fails more often.
* **Checkpoint right after a restart**, so a new shape never redoes work from before it (Varuna's
  checkpoints are per-stage and shape-independent, so the next restart can load them on any shape).
* **Joins at checkpoints.** Joined nodes are taken after the next checkpoint, by a restart that
  loses no work, when the gain pays back the restart (:meth:`~oobleck.sim.base.Policy.pays_back`).
* Checkpoint period, sharding and asynchronous writes as :mod:`~oobleck.sim.policies.checkpoint`.

What it leaves out: Varuna's preemption warnings on spot VMs (it checkpoints "what it can" when
warned; fail-stop losses give no warning, so nothing extra is saved), its profiling-based
micro-batch size search (the micro-batch size is the job's), and its heterogeneous network model.
"""

from __future__ import annotations

import functools
import math

from oobleck.errors import PlanningError
from oobleck.sim.base import Configuration, Recovery
from oobleck.sim.costs import checkpoint_stall_s, daly_goodput, daly_interval_s, restart_s
from oobleck.sim.policies.checkpoint import CheckpointPolicy


class VarunaPolicy(CheckpointPolicy):
    """Checkpoint-restart that re-picks the homogeneous shape with the best expected goodput."""

    name = "varuna"
    checkpoint_after_restart = True

    def start(self, nodes: tuple[int, ...]) -> Configuration:
        return self.configure(nodes)

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        depth = self.best_depth(len(nodes))
        plan = self.homogeneous.plan(nodes, depth)
        return Configuration(plan=plan, step_time_s=self.context.step_time_s(plan))

    @functools.lru_cache(maxsize=4096)  # noqa: B019  # NOTE: one policy per run; bounded cache.
    def best_depth(self, num_nodes: int) -> int:
        """The pipeline depth whose homogeneous shape on ``num_nodes`` has the best expected goodput.

        Ties go to the shallower depth.

        Raises:
            PlanningError: no pipeline fits on ``num_nodes`` nodes.
        """
        homogeneous = self.homogeneous
        steps = homogeneous.step_times(num_nodes)
        widths = homogeneous.widths(num_nodes)
        goodput = [
            self.expected_goodput(int(depth) * int(width), step) if math.isfinite(step) else -math.inf
            for depth, width, step in zip(homogeneous.depths, widths, steps, strict=True)
        ]
        best = max(range(len(goodput)), key=lambda index: (goodput[index], -index))
        if not math.isfinite(goodput[best]):
            raise PlanningError(f"no homogeneous pipeline fits on {num_nodes} nodes")
        return homogeneous.depths[best]

    def expected_goodput(self, used_nodes: int, step_s: float) -> float:
        """Samples per second of a shape on ``used_nodes`` nodes with ``step_s`` steps, net of the
        expected checkpoint, restart and redo costs at the configured interrupt rate of those nodes."""
        context = self.context
        rate = context.global_microbatches * context.microbatch_size / step_s
        stall_s = checkpoint_stall_s(context.checkpoint_bytes, context.costs, used_nodes)
        mtbf_s = context.mtbf_s(used_nodes)
        interval_s = context.costs.checkpoint_interval_s or daly_interval_s(stall_s, mtbf_s)
        restart = restart_s(context.checkpoint_bytes, context.costs, used_nodes)
        return rate * daly_goodput(max(interval_s, 1e-9), stall_s, restart, mtbf_s)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """Morph onto the joined nodes when the faster shape pays back its restart."""
        # NOTE: screened first on the shapes' step prices, so a join that cannot pay back builds no plan.
        homogeneous = self.homogeneous
        old_step = homogeneous.step_times(len(config.nodes))[
            homogeneous.depths.index(self.best_depth(len(config.nodes)))
        ]
        new_step = homogeneous.step_times(len(alive))[homogeneous.depths.index(self.best_depth(len(alive)))]
        estimate = config.samples_per_s * old_step / new_step
        gain_s = (estimate - config.samples_per_s) * self.context.mtbf_s(len(alive))
        pause_s = restart_s(self.context.checkpoint_bytes, self.context.costs, len(alive))
        if estimate <= config.samples_per_s or gain_s <= config.samples_per_s * pause_s:
            return None
        recovery = self.restart(alive, rollback="none")
        if recovery.config is None or not self.pays_back(config, recovery.config, recovery.duration_s):
            return None
        return Recovery(kind="grow", duration_s=recovery.duration_s, config=recovery.config, rollback="none")
