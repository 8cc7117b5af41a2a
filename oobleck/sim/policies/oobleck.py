"""``oobleck``: reconfigure from pipeline templates; fall back to a checkpoint only when forced.

On a loss of at most ``f`` nodes in use, the planning core's ``reconfigure`` re-instantiates the
damaged pipelines from precomputed templates and copies missing layers from surviving replicas; we
charge its predicted recovery time and lose only the step in flight. With more than ``f``
simultaneous losses, or when ``reconfigure`` finds no valid plan (fewer than ``n0`` nodes in a
pipeline), the job restarts from its last checkpoint on the nodes up, with the restart and load
costs of the same cost constants. Joined nodes are taken at the next step boundary by a ``grow``
reconfiguration. Checkpoints are only a fallback, written every ``fallback_checkpoint_interval_s``.
"""

from __future__ import annotations

import logging

from oobleck.errors import ReconfigurationError
from oobleck.sim.base import Configuration, Policy, Recovery, fallback_plan

logger = logging.getLogger(__name__)


class OobleckPolicy(Policy):
    """Template-based reconfiguration with checkpoint-restart as the fallback."""

    name = "oobleck"
    join_at = "step"

    def start(self, nodes: tuple[int, ...]) -> Configuration:
        """The planner's plan with the full ``f + 1`` pipelines; fewer nodes make oobleck infeasible."""
        plan = self.context.planner.plan(nodes)
        return Configuration(plan=plan, step_time_s=self.context.step_time_s(plan))

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        plan = fallback_plan(self.context, nodes)
        return Configuration(plan=plan, step_time_s=self.context.step_time_s(plan))

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        if len(lost) > self.context.fault_tolerance:
            return self.restart(alive)
        return self._reconfigure(config, "reconfigure", lost_nodes=lost) or self.restart(alive)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        return self._reconfigure(config, "grow", joined_nodes=joined)

    def _reconfigure(
        self,
        config: Configuration,
        kind: str,
        *,
        lost_nodes: tuple[int, ...] = (),
        joined_nodes: tuple[int, ...] = (),
    ) -> Recovery | None:
        planner = self.context.planner
        try:
            result = planner.reconfigure(config.plan, lost_nodes=lost_nodes, joined_nodes=joined_nodes)
        except ReconfigurationError as error:
            logger.debug("reconfigure(lost=%s, joined=%s) failed: %s", lost_nodes, joined_nodes, error)
            return None
        costs = self.context.costs
        prediction = planner.predict_recovery(result, costs.recovery, costs.step)
        return Recovery(
            kind=kind,
            duration_s=prediction.total_s,
            config=Configuration(plan=result.plan, step_time_s=self.context.step_time_s(result.plan)),
            rollback="iteration" if lost_nodes else "none",
        )
