"""``bamboo``: redundant computation inside each pipeline (Bamboo, Thorpe et al., NSDI'23).

Every node also holds the layers of the next node of its pipeline (ring order) and runs their
forward pass redundantly, so when a node fails its predecessor takes over at once. We model:

* **Memory**: a node must fit its own stages plus the state of its successor's layers; depths where
  that fails are not used, and when no depth fits the policy is reported infeasible (not run).
* **Steady overhead**: the redundant forward pass costs ``forward / (forward + backward)`` of the
  compute, of which ``bamboo_bubble_hidden_fraction`` hides in pipeline bubbles; the rest stretches
  every step and is reported as redundancy time.
* **Failover, then degraded**: when no failed node's predecessor is down too, training resumes after
  ``bamboo_failover_s`` (the step in flight is redone) on the *same* pipelines, the predecessor
  running the failed node's stages on its own devices as well (paired in order, so its slowest
  microbatch slot becomes the sum of the two). The degraded pipeline's ``(m - 1) x max`` term
  sets the step; the others wait for it at the all-reduce. Bamboo runs so until it reconfigures.
  Failovers in several pipelines cost the slowest of them, not their product: the step is always
  the healthy step scaled by the worst damaged pipeline's ratio.
* **Reconfiguration** when nodes join (at a step boundary, if the faster plan pays back the pause
  by :meth:`~oobleck.sim.base.Policy.pays_back`): state is in memory (every layer has a live copy),
  so it relaunches the workers (``restart_s``) on a fresh plan without reading a checkpoint. Joins
  are therefore not free.
* **Checkpoint-restart** when a node and its ring predecessor are both down (a layer's only two
  copies are gone): restart-all from the last checkpoint.

Why it trails in the default run (``--nodes 32 --fail-rate 0.01``, no repairs): failed nodes never
come back, so after its first failover bamboo runs degraded for the rest of the run, the damaged
pipeline's predecessor doing two nodes' work (on that run's 2-node pipelines the slowest slot
roughly doubles) while every other pipeline waits at the all-reduce; on top comes the steady
redundant-forward overhead. That is the mechanism as described, not a modelling artefact; with
``--repair-hours`` the returning node is taken by a reconfiguration and the rate recovers.

Leaves out: Bamboo's spot-instance allocation model (preemption warnings, batched allocations),
a reconfiguration onto the survivors that Bamboo might decide on after a failover *without* a
join (the paper re-plans when a pipeline cannot fail over or when nodes are allocated), the memory
headroom of the predecessor's doubled activations after a failover, and the time to re-establish
redundancy in the background.
"""

from __future__ import annotations

import bisect
from collections.abc import Set as AbstractSet

from oobleck.errors import PlanningError
from oobleck.planning.plan import Pipeline, PipelineTemplate
from oobleck.sim.base import Configuration, JobContext, Policy, Recovery, Rollback
from oobleck.sim.policies.homogeneous import HomogeneousPlan, HomogeneousPlanner


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
        # NOTE: the same price as steady_step_s (which degraded_step_s scales).
        return Configuration(
            plan=plan, step_time_s=step, redundancy_fraction=self.overhead / (1.0 + self.overhead)
        )

    def on_loss(
        self, config: Configuration, lost: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        down = config.failed | set(lost)
        if not self.can_fail_over(config, down):
            return self.restart(alive)
        degraded = Configuration(
            plan=config.plan,
            step_time_s=self.degraded_step_s(config, frozenset(down)),
            redundancy_fraction=config.redundancy_fraction,
            failed=frozenset(down),
        )
        return Recovery(
            kind="failover",
            duration_s=self.context.costs.bamboo_failover_s,
            config=degraded,
            rollback="iteration",
        )

    def can_fail_over(self, config: Configuration, down: AbstractSet[int]) -> bool:
        """Whether every down node of ``config``'s pipelines has a live ring predecessor holding its copy."""
        return not any(self._consecutive(pipeline.nodes, down) for pipeline in self._damaged(config, down))

    @staticmethod
    def _damaged(config: Configuration, down: AbstractSet[int]) -> list[Pipeline]:
        """The pipelines holding a node of ``down``, found by bisection (O(|down| log N), not O(N)).

        Bamboo's plans are homogeneous chunks of the sorted node ids without spares, so a member's
        pipeline is its rank among the plan's nodes divided by the depth.
        """
        plan = config.plan
        members = plan.nodes
        depth = plan.template_counts[0][0].num_nodes
        # NOTE: a HomogeneousPlan builds one pipeline without materialising the others.
        pipeline_at = plan.pipeline if isinstance(plan, HomogeneousPlan) else plan.pipelines.__getitem__
        found: dict[int, Pipeline] = {}
        for node in down:
            rank = bisect.bisect_left(members, node)
            if rank < len(members) and members[rank] == node and rank // depth not in found:
                found[rank // depth] = pipeline_at(rank // depth)
        return [found[key] for key in sorted(found)]

    @staticmethod
    def _consecutive(ring: tuple[int, ...], down: AbstractSet[int]) -> bool:
        """Whether some down node's predecessor in ``ring`` is down too (or the ring is all down)."""
        if len(ring) < 2:
            return any(node in down for node in ring)
        return any(node in down and ring[index - 1] in down for index, node in enumerate(ring))

    def degraded_step_s(self, config: Configuration, down: frozenset[int]) -> float:
        """Step seconds while predecessors run their failed successors' stages.

        A pipeline of ``m`` microbatches takes ``sum + (m - 1) * max`` (1F1B); covering a failed
        node leaves ``sum`` unchanged and raises ``max`` to the predecessor's doubled slot. The
        plan's step is scaled by the worst pipeline's ratio (the all-reduce scales with it too,
        a slight overestimate of the degraded cost).

        The ratio scales the *healthy* step (:meth:`steady_step_s`), never ``config``'s own, which
        after an earlier failover is already degraded: failovers in different pipelines cost the
        worst of them, not their product (synchronous data parallelism waits for one slowest
        pipeline).
        """
        ratio = 1.0
        for pipeline in self._damaged(config, down):
            ring = pipeline.nodes
            template = pipeline.template
            by_node: list[list[float]] = [[] for _ in range(template.num_nodes)]
            for stage in template.stages:
                by_node[stage.node].append(stage.latency_s)
            slot = template.max_latency_s
            for index, node in enumerate(ring):
                if node in down:
                    own = by_node[index - 1]
                    extra = by_node[index]
                    paired = [
                        (own[j] if j < len(own) else 0.0) + (extra[j] if j < len(extra) else 0.0)
                        for j in range(max(len(own), len(extra)))
                    ]
                    slot = max(slot, *paired)
            m = pipeline.microbatches
            normal = template.sum_latency_s + (m - 1) * template.max_latency_s
            ratio = max(ratio, (template.sum_latency_s + (m - 1) * slot) / normal)
        return self.steady_step_s(config) * ratio

    def steady_step_s(self, config: Configuration) -> float:
        """Step seconds of ``config``'s plan with no node down: the plan's step plus the redundancy."""
        return self.context.step_time_s(config.plan) * (1.0 + self.overhead)

    def on_join(
        self, config: Configuration, joined: tuple[int, ...], alive: tuple[int, ...]
    ) -> Recovery | None:
        recovery = self._reconfigure("reconfigure", alive, "none")
        if recovery is None or recovery.config is None:
            return None
        if not self.pays_back(config, recovery.config, recovery.duration_s):
            return None
        return recovery

    def _reconfigure(self, kind: str, alive: tuple[int, ...], rollback: Rollback) -> Recovery | None:
        """Relaunch on every node up with a fresh plan, state from the live in-memory copies."""
        try:
            config = self.configure(alive)
        except PlanningError:
            return None
        return Recovery(
            kind=kind, duration_s=self.context.costs.recovery.restart_s, config=config, rollback=rollback
        )
