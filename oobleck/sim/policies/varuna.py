"""``varuna``: job morphing, i.e. checkpoint-restart that re-plans depth x width on every restart.

Like :mod:`~oobleck.sim.policies.checkpoint` (Young/Daly checkpoints, restart-all on any loss, redo
since the last checkpoint, joined nodes taken after the next checkpoint), but each restart picks
the pipeline depth and data-parallel width that give the shortest step on the nodes now up
(Varuna, EuroSys'22, morphs the job this way); all pipelines stay identical.
"""

from __future__ import annotations

from oobleck.sim.policies.checkpoint import CheckpointPolicy


class VarunaPolicy(CheckpointPolicy):
    """Checkpoint-restart with the best homogeneous depth x width for each node count."""

    name = "varuna"

    def depth_for(self, num_nodes: int) -> int:
        """The depth with the shortest step on ``num_nodes`` nodes, re-chosen on every restart."""
        return self.homogeneous.best_depth(num_nodes)
