"""``varuna``: job morphing, i.e. checkpoint-restart that re-plans depth x width on every restart.

Like :mod:`~oobleck.sim.policies.checkpoint` (Young/Daly checkpoints, restart-all on any loss, redo
since the last checkpoint, joined nodes taken after the next checkpoint), but each restart picks
the pipeline depth and data-parallel width that give the shortest step on the nodes now up
(Varuna, EuroSys'22, morphs the job this way); all pipelines stay identical.
"""

from __future__ import annotations

from oobleck.sim.base import Configuration
from oobleck.sim.policies.checkpoint import CheckpointPolicy


class VarunaPolicy(CheckpointPolicy):
    """Checkpoint-restart with the best homogeneous depth x width for each node count."""

    name = "varuna"

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        plan = self.homogeneous.plan(nodes, self.homogeneous.best_depth(len(nodes)))
        return Configuration(plan=plan, step_time_s=plan.iteration_time_s)
