"""Homogeneous plans (``width`` identical pipelines of ``depth`` nodes) for the restart baselines.

Checkpoint-restart frameworks (torchelastic + Megatron/DeepSpeed, Varuna, Bamboo) run identical
pipelines. We build them from the planning core's templates, batch split and step-time model, so a
baseline's throughput is priced exactly like Oobleck's; only the choice of pipelines differs.

Assumptions:
    * Nodes left over by ``len(nodes) % depth`` idle.
    * Every pipeline needs at least as many microbatches as it has stages, which caps the width.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from oobleck.errors import PlanningError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import layer_tables, plan_iteration_time_s
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan
from oobleck.sim.base import JobContext

_PIPELINE_CACHE = 1 << 18
"""Pipelines kept for reuse before the cache is dropped (bounds memory on long runs)."""


class HomogeneousPlanner:
    """Builds and ranks homogeneous plans; depth choices are cached per node count."""

    def __init__(self, context: JobContext) -> None:
        self.context = context
        self._pipelines: dict[tuple[int, tuple[int, ...]], Pipeline] = {}
        """Pipelines already built, by (microbatches, nodes): a restart after one loss rebuilds only
        the pipelines whose nodes or share of the batch changed."""
        self.templates = {template.num_nodes: template for template in context.planner.templates}
        depths = sorted(self.templates)
        grads = layer_tables(context.profile).grad_prefix_bytes
        self._depths = np.array(depths, dtype=np.int64)
        self._sum = np.array([self.templates[d].sum_latency_s for d in depths])
        self._max = np.array([self.templates[d].max_latency_s for d in depths])
        self._stages = np.array([self.templates[d].num_stages for d in depths], dtype=np.int64)
        self._grad = np.array(
            [
                max(
                    int(grads[s.end_layer] - grads[s.first_layer]) // s.gpus for s in self.templates[d].stages
                )
                for d in depths
            ],
            dtype=np.float64,
        )

    def width(self, depth: int, num_nodes: int) -> int:
        """Pipelines of ``depth`` nodes that ``num_nodes`` nodes and the global batch allow."""
        stages = self.templates[depth].num_stages
        return min(num_nodes // depth, self.context.global_microbatches // stages)

    def plan(self, nodes: tuple[int, ...], depth: int) -> Plan:
        """``width`` pipelines of the ``depth``-node template on the lowest node ids.

        Raises:
            PlanningError: no template of that depth, or too few nodes for one pipeline.
        """
        if depth not in self.templates:
            raise PlanningError(f"no pipeline template of {depth} nodes")
        width = self.width(depth, len(nodes))
        if width < 1:
            raise PlanningError(f"{len(nodes)} nodes cannot hold one {depth}-node pipeline")
        template = self.templates[depth]
        microbatches, step_s = self._shape(depth, width)
        cache = self._pipelines
        if len(cache) > _PIPELINE_CACHE:
            cache.clear()
        pipelines = []
        for i, count in enumerate(microbatches):
            chunk = nodes[i * depth : (i + 1) * depth]
            pipeline = cache.get((count, chunk))
            if pipeline is None:
                pipeline = cache[count, chunk] = Pipeline(template=template, nodes=chunk, microbatches=count)
            pipelines.append(pipeline)
        # NOTE: the invariants Plan checks hold by construction (disjoint slices of distinct sorted
        # ids, the exact batch split), and checking them is O(nodes) on every restart.
        return Plan.trusted(
            pipelines=tuple(pipelines),
            global_microbatches=self.context.global_microbatches,
            microbatch_size=self.context.microbatch_size,
            fault_tolerance=0,
            iteration_time_s=step_s,
            spare_nodes=(),
            nodes=nodes[: depth * width],
            template_counts=((template, width),),
        )

    @functools.lru_cache(maxsize=4096)  # noqa: B019  # NOTE: one planner per run; bounded cache.
    def _shape(self, depth: int, width: int) -> tuple[tuple[int, ...], float]:
        """Batch split and step time of ``width`` pipelines of ``depth`` nodes (node ids do not matter)."""
        template = self.templates[depth]
        microbatches = distribute_batch([template] * width, self.context.global_microbatches)
        pipelines = [
            Pipeline(template=template, nodes=tuple(range(i * depth, (i + 1) * depth)), microbatches=count)
            for i, count in enumerate(microbatches)
        ]
        return microbatches, plan_iteration_time_s(pipelines, self.context.profile, self.context.hardware)

    def best_depth(self, num_nodes: int, allowed: Callable[[PipelineTemplate], bool] | None = None) -> int:
        """The depth whose homogeneous plan on ``num_nodes`` nodes has the shortest step.

        Evaluates every depth at once with the same formula as the cost model (slowest pipeline
        ``sum + (ceil(B / w) - 1) * max`` plus the ring all-reduce), ties going to the shallower.

        Raises:
            PlanningError: no allowed depth fits in ``num_nodes`` nodes.
        """
        mask = tuple(allowed(self.templates[int(d)]) for d in self._depths) if allowed else None
        return self._best_depth(num_nodes, mask)

    @property
    def depths(self) -> tuple[int, ...]:
        """Pipeline depths (nodes per pipeline) with a template, ascending."""
        return tuple(int(depth) for depth in self._depths)

    def widths(self, num_nodes: int) -> np.ndarray:
        """Width of each depth's homogeneous plan on ``num_nodes`` nodes (0: does not fit)."""
        return np.minimum(num_nodes // self._depths, self.context.global_microbatches // self._stages)

    @functools.lru_cache(maxsize=4096)  # noqa: B019  # NOTE: one planner per run; bounded cache.
    def step_times(self, num_nodes: int) -> tuple[float, ...]:
        """Step seconds of each depth's homogeneous plan on ``num_nodes`` nodes (``inf``: no fit).

        The cost model's formula for identical pipelines, vectorised over depths: slowest pipeline
        ``sum + (ceil(B / w) - 1) * max`` plus the ring all-reduce of the largest stage's gradients,
        plus the step constants' fixed ``step_overhead_s`` (their scales are not applied: ranking
        shapes only needs the relative price).
        """
        batch = self.context.global_microbatches
        width = self.widths(num_nodes)
        safe = np.maximum(width, 1)
        per_pipeline = -(-batch // safe)
        sync = np.where(safe > 1, 2 * (safe - 1) / safe * self._grad, 0.0)
        sync = sync / self.context.hardware.inter_node_bandwidth_bytes_per_s
        step = self._sum + (per_pipeline - 1) * self._max + sync + self.context.costs.step.step_overhead_s
        return tuple(float(value) for value in np.where(width >= 1, step, np.inf))

    @functools.lru_cache(maxsize=4096)  # noqa: B019  # NOTE: one planner per run; bounded cache.
    def _best_depth(self, num_nodes: int, mask: tuple[bool, ...] | None) -> int:
        step = np.array(self.step_times(num_nodes))
        if mask is not None:
            step = np.where(np.array(mask), step, np.inf)
        if not np.isfinite(step).any():
            raise PlanningError(f"no homogeneous pipeline fits on {num_nodes} nodes")
        return int(self._depths[int(np.argmin(step))])
