"""``oobleck``: reconfigure from pipeline templates; fall back to a checkpoint only when forced.

What it models (Oobleck, Jang et al., SOSP'23):

* **Reconfigure in place whatever the number of simultaneous losses.** The planning core's
  ``reconfigure`` re-instantiates the damaged pipelines from precomputed templates and copies
  missing layers from surviving replicas. ``f`` is what the plan *guarantees* to survive, not a
  limit: a rack of 8 nodes lost at once is still reconfigured when every layer keeps a replica. We
  charge the predicted recovery phases (detect, plan, rebuild groups, transfer state) and lose
  the step in flight.
* **Restart from a checkpoint only when ``reconfigure`` finds no valid plan** (a layer lost every
  replica, or fewer than ``n0`` nodes are left), with the restart and load costs of the same
  constants, on the largest fault tolerance the survivors allow.
* **The first step after a recovery trains**: it is credited like any step, and only its
  warm-up overhead (``first_step_warmup_s``) is charged on top of the phases above.
* **Joins at step boundaries**, by a ``grow`` reconfiguration, only when the gain pays back the
  pause (:meth:`~oobleck.sim.base.Policy.pays_back`, the rule every elastic policy uses).
* Checkpoints are only a fallback, written every ``fallback_checkpoint_interval_s``.

Leaves out: failures during state transfer beyond re-running the recovery (a further loss restarts
the recovery from the new answer), and stragglers.
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
        return self._reconfigure(config, "reconfigure", lost_nodes=lost) or self.restart(alive)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        recovery = self._reconfigure(config, "grow", joined_nodes=joined)
        if recovery is None or recovery.config is None:
            return None
        if not self.pays_back(config, recovery.config, recovery.duration_s):
            return None
        return recovery

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
        # NOTE: the first step after trains (credited by the job); only its warm-up is a pause.
        pause_s = prediction.total_s - prediction.first_step_s + costs.first_step_warmup_s
        return Recovery(
            kind=kind,
            duration_s=pause_s,
            config=Configuration(plan=result.plan, step_time_s=self.context.step_time_s(result.plan)),
            rollback="iteration" if lost_nodes else "none",
        )
