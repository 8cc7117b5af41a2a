"""``recycle`` (experimental): ReCycle's rerouting (Gandhi et al., SOSP'24), on Oobleck's templates.

What it models: when a node fails, the healthy stages of every pipeline keep running; the failed
node's stages are executed, for its pipeline's microbatches, by the *same-stage peers* of the other
pipelines built from the same template (they hold the same layers), inside their pipeline bubbles
(ReCycle's adaptive pipelining). We charge:

* the pause: detect, plan and rebuild the process groups (no layer state moves, so no transfer);
  the step in flight is redone;
* afterwards, each peer's extra microbatches at that stage: ``m_p / Q`` microbatches of the failed
  node's slowest slot (``Q`` peers), of which the stage's idle time in a 1F1B step (the pipeline's
  time minus ``m`` busy slots) hides what it can; the rest lengthens the peers' pipelines and so
  the step (the all-reduce waits for the slowest);
* rerouted operation lasts until nodes join: then an ordinary Oobleck reconfiguration (priced by
  the planning core) removes the failed nodes and takes the joined ones, if it pays back its pause.

When a failed node has no live same-template peer at its position, or a loss needs more than
rerouting, it behaves exactly like ``oobleck``. Leaves out: ReCycle's decoupled backward pass
(weight-gradient deferral), which hides more of the extra work than bubbles alone: our delay is an
upper bound of ReCycle's.
"""

from __future__ import annotations

from oobleck.planning.recovery import predict_recovery
from oobleck.sim.base import Configuration, JobContext, Recovery
from oobleck.sim.policies.homogeneous import HomogeneousPlanner
from oobleck.sim.policies.oobleck import OobleckPolicy


class RecyclePolicy(OobleckPolicy):
    """Oobleck that first reroutes a failed node's work to its same-stage peers."""

    name = "recycle"

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        down = config.failed | frozenset(lost)
        delay_ratio = self.rerouted_ratio(config, down)
        if delay_ratio is None:
            lost_all = tuple(sorted(down))
            return self._reconfigure(config, "reconfigure", lost_nodes=lost_all) or self.restart(alive)
        prediction = predict_recovery(
            config.plan,
            (),
            self.context.hardware,
            self.context.costs.recovery,
            tied_pairs=self.context.planner.tied_pairs,
        )
        rerouted = Configuration(
            plan=config.plan, step_time_s=self._steady_s(config) * delay_ratio, failed=down
        )
        return Recovery(
            kind="reroute",
            duration_s=prediction.total_s - prediction.first_step_s,
            config=rerouted,
            rollback="iteration",
        )

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        """Reconfigure away the failed nodes, then take the joined ones (both pauses charged).

        Two planner calls because a returning node is both a failed member and a new one.
        """
        current: Configuration = config
        pause_s = 0.0
        if config.failed:
            removed = self._reconfigure(config, "grow", lost_nodes=tuple(sorted(config.failed)))
            if removed is None or removed.config is None:
                return None
            current, pause_s = removed.config, removed.duration_s
        grown = self._reconfigure(current, "grow", joined_nodes=joined)
        if (
            grown is not None
            and grown.config is not None
            and self.pays_back(current, grown.config, grown.duration_s)
        ):
            current, pause_s = grown.config, pause_s + grown.duration_s
        if current is config:
            return None
        return Recovery(kind="grow", duration_s=pause_s, config=current, rollback="none")

    def _steady_s(self, config: Configuration) -> float:
        return self.context.step_time_s(config.plan)

    def rerouted_ratio(self, config: Configuration, down: frozenset[int]) -> float | None:
        """Step-time ratio with every down node's work rerouted to its peers (``None``: impossible)."""
        pipelines = config.plan.pipelines
        ratio = 1.0
        for pipeline in pipelines:
            for index, node in enumerate(pipeline.nodes):
                if node not in down:
                    continue
                peers = [
                    other
                    for other in pipelines
                    if other is not pipeline
                    and other.template is pipeline.template
                    and other.nodes[index] not in down
                ]
                if not peers:
                    return None
                template = pipeline.template
                slot = max(s.latency_s for s in template.stages if s.node == index)
                for peer in peers:
                    busy = peer.microbatches * slot
                    normal = template.sum_latency_s + (peer.microbatches - 1) * template.max_latency_s
                    extra = pipeline.microbatches / len(peers) * slot
                    delay = max(0.0, extra - (normal - busy))
                    ratio = max(ratio, (normal + delay) / normal)
        return ratio


def recycle_factory(context: JobContext, homogeneous: HomogeneousPlanner) -> RecyclePolicy:
    """Build the policy for :func:`oobleck.sim.simulate`'s ``extra_policies``."""
    return RecyclePolicy(context)
