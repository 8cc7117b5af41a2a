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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from oobleck.errors import PlanningError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import layer_tables, plan_iteration_time_s
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan
from oobleck.sim.base import JobContext


class HomogeneousPlan(Plan):
    """``width`` pipelines of one template on consecutive chunks of sorted node ids, built lazily.

    A homogeneous plan is just (template, batch split, nodes): a restart prices it without its
    pipelines, so they are materialised only when something reads :attr:`pipelines` (a restart at
    16K nodes would otherwise build thousands of them on every event). :meth:`pipeline` builds one.
    Everything else (:attr:`nodes`, :attr:`template_counts`, equality, pickling) is a
    :class:`~oobleck.planning.plan.Plan`'s; the invariants hold by construction (disjoint slices of
    distinct sorted ids, the exact batch split), so they are not re-checked.
    """

    __slots__ = ("_built", "_counts", "_template")

    _template: PipelineTemplate
    _counts: tuple[int, ...]
    _built: tuple[Pipeline, ...] | None

    @classmethod
    def of(
        cls,
        *,
        template: PipelineTemplate,
        microbatches: tuple[int, ...],
        global_microbatches: int,
        microbatch_size: int,
        iteration_time_s: float,
        nodes: tuple[int, ...],
    ) -> HomogeneousPlan:
        """The plan of ``len(microbatches)`` pipelines of ``template`` on ``nodes`` (sorted, chunked)."""
        plan = object.__new__(cls)
        for name, value in (
            ("global_microbatches", global_microbatches),
            ("microbatch_size", microbatch_size),
            ("fault_tolerance", 0),
            ("iteration_time_s", iteration_time_s),
            ("spare_nodes", ()),
            ("_nodes", nodes),
            ("_template_counts", ((template, len(microbatches)),)),
            ("_index", None),
            ("_template", template),
            ("_counts", microbatches),
            ("_built", None),
        ):
            object.__setattr__(plan, name, value)
        return plan

    @property  # NOTE: a lazy stand-in for the field of the same name.
    def pipelines(self) -> tuple[Pipeline, ...]:
        """Every pipeline, built on first use."""
        built = self._built
        if built is None:
            built = tuple(self.pipeline(k) for k in range(len(self._counts)))
            object.__setattr__(self, "_built", built)
        return built

    def pipeline(self, position: int) -> Pipeline:
        """Pipeline ``position`` (0-based), built from its chunk of the nodes without the others."""
        if self._built is not None:
            return self._built[position]
        depth = self._template.num_nodes
        chunk = self.nodes[position * depth : (position + 1) * depth]
        return Pipeline(template=self._template, nodes=chunk, microbatches=self._counts[position])

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        # NOTE: a pickle holds the materialised pipelines (Plan.__getstate__ reads every field).
        super().__setstate__({name: value for name, value in state.items() if name != "pipelines"})
        pipelines = state["pipelines"]
        object.__setattr__(self, "_template", pipelines[0].template)
        object.__setattr__(self, "_counts", tuple(p.microbatches for p in pipelines))
        object.__setattr__(self, "_built", tuple(pipelines))


class HomogeneousPlanner:
    """Builds and ranks homogeneous plans; depth choices are cached per node count."""

    def __init__(self, context: JobContext) -> None:
        self.context = context
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
        microbatches, step_s = self._shape(depth, width)
        return HomogeneousPlan.of(
            template=self.templates[depth],
            microbatches=microbatches,
            global_microbatches=self.context.global_microbatches,
            microbatch_size=self.context.microbatch_size,
            iteration_time_s=step_s,
            nodes=nodes[: depth * width],
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
