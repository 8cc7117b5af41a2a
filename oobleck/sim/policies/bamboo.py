"""``bamboo``: redundant computation inside each pipeline (Bamboo, NSDI'23).

Every node also holds the layers of the next node of its pipeline (ring order) and runs their
forward pass redundantly, so when a node fails its predecessor takes over at once. We model:

* **Memory**: a node must fit its own stages plus the state of its successor's layers; depths where
  that fails are not used, and when no depth fits the policy is reported infeasible (not run).
* **Steady overhead**: the redundant forward pass costs ``forward / (forward + backward)`` of the
  compute, of which ``bamboo_bubble_hidden_fraction`` hides in pipeline bubbles; the rest stretches
  every step and is reported as redundancy time.
* **Failover**: if no failed node's successor failed too, training resumes after
  ``bamboo_failover_s`` on a re-planned configuration of the survivors, losing the step in flight
  (optimistic: real Bamboo runs degraded until it reconfigures). Otherwise restart-all from the
  last checkpoint. Joined nodes are taken at the next step boundary with a failover-length pause.
"""

from __future__ import annotations

from oobleck.errors import PlanningError
from oobleck.planning.plan import PipelineTemplate
from oobleck.sim.base import Configuration, JobContext, Policy, Recovery, Rollback
from oobleck.sim.policies.homogeneous import HomogeneousPlanner


class BambooPolicy(Policy):
    """Redundant computation with fast failover; checkpoint-restart when a neighbour pair fails."""

    name = "bamboo"
    join_at = "step"

    def __init__(self, context: JobContext, homogeneous: HomogeneousPlanner) -> None:
        super().__init__(context)
        self.homogeneous = homogeneous
        layers = context.profile.layers
        forward = sum(layer.forward_s for layer in layers)
        compute = sum(layer.compute_s for layer in layers)
        hidden = context.costs.bamboo_bubble_hidden_fraction
        self.overhead = (forward / compute if compute > 0 else 0.0) * (1.0 - hidden)
        self._fits: dict[int, bool] = {}

    def fits(self, template: PipelineTemplate) -> bool:
        """Whether ``template`` can carry Bamboo's redundant layers (cached per node count)."""
        if template.num_nodes not in self._fits:
            self._fits[template.num_nodes] = self._check_memory(template)
        return self._fits[template.num_nodes]

    def _check_memory(self, template: PipelineTemplate) -> bool:
        """Whether every node of ``template`` holds its stages plus its successor's layer state.

        Redundancy needs a successor on another node, so a one-node pipeline never qualifies.
        """
        if template.num_nodes < 2:
            return False
        hardware = self.context.hardware
        capacity = hardware.gpus_per_node * hardware.usable_memory_bytes
        own = [0] * template.num_nodes
        state = [0] * template.num_nodes
        layers = self.context.profile.layers
        for stage in template.stages:
            own[stage.node] += stage.memory_bytes * stage.gpus
            state[stage.node] += sum(layers[i].state_bytes for i in stage.layers)
        return all(
            own[node] + state[(node + 1) % template.num_nodes] <= capacity
            for node in range(template.num_nodes)
        )

    def configure(self, nodes: tuple[int, ...]) -> Configuration:
        try:
            depth = self.homogeneous.best_depth(len(nodes), self.fits)
        except PlanningError:
            raise PlanningError(
                f"no pipeline depth on {len(nodes)} nodes fits each node's stages plus its "
                "neighbour's redundant layers in memory; add nodes or use a smaller model"
            ) from None
        plan = self.homogeneous.plan(nodes, depth)
        step = self.context.step_time_s(plan) * (1.0 + self.overhead)
        return Configuration(
            plan=plan, step_time_s=step, redundancy_fraction=self.overhead / (1.0 + self.overhead)
        )

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        affected = set(lost)
        for pipeline in config.plan.pipelines:
            ring = pipeline.nodes
            for index, node in enumerate(ring):
                if node in affected and ring[(index + 1) % len(ring)] in affected:
                    return self.restart(alive)
        return self._failover("failover", alive, "iteration") or self.restart(alive)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        recovery = self._failover("grow", alive, "none")
        if (
            recovery is None
            or recovery.config is None
            or recovery.config.samples_per_s <= config.samples_per_s
        ):
            return None
        return recovery

    def _failover(self, kind: str, alive: tuple[int, ...], rollback: Rollback) -> Recovery | None:
        try:
            config = self.configure(alive)
        except PlanningError:
            return None
        return Recovery(
            kind=kind,
            duration_s=self.context.costs.bamboo_failover_s,
            config=config,
            rollback=rollback,
        )
