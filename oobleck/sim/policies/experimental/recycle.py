"""``recycle``: reroute a damaged pipeline's microbatches to its data-parallel peers, then regrow.

Idea (after ReCycle, SOSP'24): every layer of a damaged pipeline still has a replica in each
surviving pipeline, so the survivors can take over its share of the global batch at once. Compared
with ``oobleck``:

* the step in flight is not lost: the peers finish it (its progress carries over);
* the pause is only detection, planning and rebuilding the process groups: no layer state moves,
  and no separate first step is charged (training simply continues);
* the damaged pipeline's surviving nodes sit idle until the next step boundary, where a normal
  ``grow`` reconfiguration (priced by the planning core) takes them back.

The price is a slower configuration for that one step or so (fewer pipelines share ``B``). When
more than ``f`` nodes fail at once or no pipeline survives, it behaves exactly like ``oobleck``.

Assumptions:
    * Re-splitting ``B`` over the surviving pipelines uses the planning core's exact batch split and
      step-time model; the rerouted plan keeps at least one pipeline.
"""

from __future__ import annotations

from oobleck.errors import PlanningError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.plan import Pipeline, Plan
from oobleck.planning.recovery import predict_recovery
from oobleck.sim.base import Configuration, JobContext, Recovery
from oobleck.sim.policies.homogeneous import HomogeneousPlanner
from oobleck.sim.policies.oobleck import OobleckPolicy


class RecyclePolicy(OobleckPolicy):
    """Oobleck with immediate rerouting to data-parallel peers before regrowing."""

    name = "recycle"
    join_idle = True

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        affected = set(lost)
        survivors = [p for p in config.plan.pipelines if affected.isdisjoint(p.nodes)]
        if len(affected) > self.context.fault_tolerance or not survivors:
            return super().on_loss(config, lost, alive)
        try:
            plan = self._reroute(config.plan, survivors)
        except PlanningError:
            return super().on_loss(config, lost, alive)
        prediction = predict_recovery(plan, (), self.context.hardware, self.context.costs.recovery)
        return Recovery(
            kind="reroute",
            duration_s=prediction.total_s - prediction.first_step_s,
            config=Configuration(plan=plan, step_time_s=self.context.step_time_s(plan)),
            rollback="none",
        )

    def _reroute(self, old: Plan, survivors: list[Pipeline]) -> Plan:
        """The surviving pipelines with the whole global batch split over them.

        Raises:
            PlanningError: the survivors cannot absorb ``B`` (fewer microbatches than stages).
        """
        context = self.context
        counts = distribute_batch([p.template for p in survivors], context.global_microbatches)
        pipelines = tuple(
            Pipeline(template=p.template, nodes=p.nodes, microbatches=count)
            for p, count in zip(survivors, counts, strict=True)
        )
        return Plan(
            pipelines=pipelines,
            global_microbatches=context.global_microbatches,
            microbatch_size=context.microbatch_size,
            fault_tolerance=min(old.fault_tolerance, len(pipelines) - 1),
            iteration_time_s=plan_iteration_time_s(pipelines, context.profile, context.hardware),
        )


def recycle_factory(context: JobContext, homogeneous: HomogeneousPlanner) -> RecyclePolicy:
    """Build the policy for :func:`oobleck.sim.simulate`'s ``extra_policies``."""
    return RecyclePolicy(context)
