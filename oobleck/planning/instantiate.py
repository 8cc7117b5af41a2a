"""Choose how many pipelines of each template to run on N nodes, and on which nodes.

We look for counts ``x_n`` (pipelines of the ``n``-node template) with ``sum x_n * n = N`` (every
node used), ``sum x_n >= f + 1`` (f failures leave a replica of every layer) and the smallest step
time after exact batch distribution. Instead of enumerating every multiset (the original's 2e7 at
128 nodes), we bisect on the makespan ``T``: at a given ``T`` a template absorbs at most
``cap_n(T)`` microbatches, and ``T`` is feasible when an unbounded knapsack over node counts can
reach ``sum x_n * cap_n(T) >= B``. The knapsack is vectorised with numpy (binary-split item copies,
the pipeline count as a small saturating state ``min(count, f + 1)``).

Assumptions:
    * Templates have distinct node counts; the smallest one is ``n0``.
    * The cross-pipeline gradient sync depends only weakly on the number of pipelines, so the choice
      minimises the slowest pipeline and the sync time is added afterwards.
    * Among combinations with the same makespan, the one with the most spare capacity (then the
      fewest stages) wins; the knapsack's scan order makes the choice deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.batch import distribute_batch, microbatch_capacity
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan
from oobleck.planning.profile import ModelProfile

logger = logging.getLogger(__name__)

_NEGATIVE = -(2**62)
"""Knapsack value of an unreachable state; far below any sum of real values."""


def guaranteed_range(
    templates: Sequence[PipelineTemplate], fault_tolerance: int, num_nodes: int
) -> tuple[int, int]:
    """Node counts a job can run on while keeping ``f + 1`` pipelines: ``((f + 1) * n0, N)``.

    Args:
        templates: The generated templates (any order).
        fault_tolerance: ``f``, failures the plan must survive.
        num_nodes: ``N``, the largest cluster the job plans for.

    Returns:
        ``(lowest, highest)`` node counts, inclusive.
    """
    smallest = min(template.num_nodes for template in templates)
    return (fault_tolerance + 1) * smallest, num_nodes


def instantiate(
    templates: Sequence[PipelineTemplate],
    node_ids: Sequence[int],
    *,
    fault_tolerance: int,
    global_microbatches: int,
    microbatch_size: int,
    profile: ModelProfile,
    hardware: HardwareSpec,
) -> Plan:
    """Build the fastest plan that uses every node and keeps at least ``f + 1`` pipelines.

    Pipelines are ordered by (node count, position) and get contiguous runs of the sorted node ids,
    so every worker derives the same plan from the same inputs. 1024 nodes, ~90 templates and
    ``f <= 3`` take a few tens of milliseconds.

    Args:
        templates: One template per node count (``generate_templates`` output).
        node_ids: The nodes to use, all of them; any order, no duplicates.
        fault_tolerance: ``f >= 0``.
        global_microbatches: ``B``, microbatches per step over all pipelines.
        microbatch_size: Samples per microbatch (recorded in the plan).
        profile: The model profile (for the gradient-sync term of the step time).
        hardware: The cluster hardware (same).

    Returns:
        The plan; its ``iteration_time_s`` is the slowest pipeline plus the gradient sync.

    Raises:
        ConfigError: duplicate node ids, negative ``f`` or non-positive sizes.
        PlanningError: fewer than ``(f + 1) * n0`` nodes, or no combination of templates fits.
    """
    nodes = _validated_nodes(node_ids)
    by_size = _templates_by_size(templates)
    if fault_tolerance < 0:
        raise ConfigError(f"fault_tolerance must be >= 0, got {fault_tolerance}")
    if global_microbatches <= 0 or microbatch_size <= 0:
        raise ConfigError(
            f"global_microbatches and microbatch_size must be > 0, got {global_microbatches} "
            f"and {microbatch_size}"
        )
    low, _ = guaranteed_range(templates, fault_tolerance, len(nodes))
    if len(nodes) < low:
        smallest = min(by_size)
        raise PlanningError(
            f"fault_tolerance={fault_tolerance} needs >= (f+1)*n0 = {low} nodes (n0={smallest}), got "
            f"{len(nodes)}; lower fault_tolerance or add nodes"
        )
    counts = choose_counts(list(by_size.values()), len(nodes), fault_tolerance + 1, global_microbatches)
    chosen = [by_size[size] for size in sorted(counts) for _ in range(counts[size])]
    microbatches = distribute_batch(chosen, global_microbatches)
    pipelines = []
    start = 0
    for template, count in zip(chosen, microbatches, strict=True):
        pipelines.append(
            Pipeline(template=template, nodes=nodes[start : start + template.num_nodes], microbatches=count)
        )
        start += template.num_nodes
    logger.debug("instantiated %s on %d nodes", dict(sorted(counts.items())), len(nodes))
    return Plan(
        pipelines=tuple(pipelines),
        global_microbatches=global_microbatches,
        microbatch_size=microbatch_size,
        fault_tolerance=fault_tolerance,
        iteration_time_s=plan_iteration_time_s(pipelines, profile, hardware),
    )


def choose_counts(
    templates: Sequence[PipelineTemplate], num_nodes: int, min_pipelines: int, global_microbatches: int
) -> dict[int, int]:
    """Pipelines per template size that use exactly ``num_nodes`` with the smallest makespan.

    Exact: the optimal makespan is one of the values ``a_n + c_n * (b - 1)``; we bisect on ``T``,
    snap a feasible ``T`` down to the makespan its combination really achieves and stop when no
    candidate value lies between the largest infeasible and the smallest feasible ``T``.

    Args:
        templates: Templates with distinct node counts.
        num_nodes: ``N``; every node must be used.
        min_pipelines: At least this many pipelines (``f + 1``).
        global_microbatches: ``B``.

    Returns:
        ``{num_nodes of template: number of pipelines}`` for the templates used.

    Raises:
        PlanningError: no combination of template sizes adds up to ``num_nodes`` with enough
            pipelines, or ``B`` is too small for the stages of every feasible combination.
    """
    knapsack = _Knapsack(templates, num_nodes, min_pipelines, global_microbatches)
    high = float(knapsack.times(np.full(len(templates), global_microbatches)).max())
    best = knapsack.solve(high)
    if best is None:
        sizes = sorted(template.num_nodes for template in templates)
        raise PlanningError(
            f"no combination of pipeline sizes {sizes} with >= {min_pipelines} pipelines uses exactly "
            f"{num_nodes} nodes with global_microbatches={global_microbatches} (each pipeline needs "
            f">= its stage count); change the node count or raise global_microbatches"
        )
    high, counts = best
    low = -1.0
    while True:
        next_candidate = knapsack.next_value_above(low)
        if next_candidate >= high:
            return counts
        middle = max(0.5 * (low + high), next_candidate)
        found = knapsack.solve(middle)
        if found is None:
            low = middle
        else:
            high, counts = found


@dataclass
class _Knapsack:
    """Feasibility of a makespan: the unbounded knapsack over template sizes for one ``T``."""

    templates: Sequence[PipelineTemplate]
    num_nodes: int
    min_pipelines: int
    global_microbatches: int

    def __post_init__(self) -> None:
        self.sizes = np.array([t.num_nodes for t in self.templates], dtype=np.int64)
        self.stages = np.array([t.num_stages for t in self.templates], dtype=np.int64)
        self.base = np.array([t.sum_latency_s for t in self.templates], dtype=np.float64)
        self.slope = np.array([t.max_latency_s for t in self.templates], dtype=np.float64)
        # NOTE: the knapsack maximises one integer; a lexicographic pair (a, b) becomes
        # a * scale + b with scale above any possible sum of b.
        most_pipelines = self.num_nodes // int(self.sizes.min()) + 1
        self.stage_scale = most_pipelines * int(self.stages.max()) + 1
        self.capacity_scale = most_pipelines * self.global_microbatches + 1

    def times(self, microbatches: np.ndarray) -> np.ndarray:
        return self.base + (microbatches - 1) * self.slope

    def next_value_above(self, threshold: float) -> float:
        """Smallest candidate makespan strictly above ``threshold``."""
        capacity = microbatch_capacity(self.base, self.slope, threshold, self.global_microbatches)
        following = np.maximum(capacity + 1, self.stages)
        return float(self.times(following).min())

    def solve(self, threshold: float) -> tuple[float, dict[int, int]] | None:
        """The best combination within makespan ``threshold`` and its real makespan, or None."""
        capacity = microbatch_capacity(self.base, self.slope, threshold, self.global_microbatches)
        usable = np.flatnonzero(capacity >= self.stages)
        if usable.size == 0:
            return None
        # NOTE: the most capacity (ties: fewest stages) decides feasibility unless that combination has
        # more stages than B; then the fewest stages (ties: most capacity) gets a second chance.
        capacity_first = capacity * self.stage_scale - self.stages
        stages_first = capacity - self.stages * self.capacity_scale
        for values in (capacity_first, stages_first):
            counts = self._best_counts(usable, values)
            if counts is None:
                return None
            chosen = [i for i in usable for _ in range(counts.get(int(self.sizes[i]), 0))]
            total_stages = int(sum(self.stages[i] for i in chosen))
            if total_stages <= self.global_microbatches:
                break
        else:
            return None
        if int(sum(capacity[i] for i in chosen)) < self.global_microbatches:
            return None
        microbatches = distribute_batch([self.templates[i] for i in chosen], self.global_microbatches)
        makespan = max(
            self.templates[i].iteration_time_s(b) for i, b in zip(chosen, microbatches, strict=True)
        )
        return makespan, counts

    def _best_counts(self, usable: np.ndarray, values: np.ndarray) -> dict[int, int] | None:
        """Knapsack ``max sum x*value s.t. sum x*size = N, min(sum x, f+1) = f+1``; backtracked."""
        full = self.min_pipelines
        width = self.num_nodes + 1
        table = np.full((full + 1, width), _NEGATIVE, dtype=np.int64)
        table[0, 0] = 0
        history = []
        for index in usable:
            size = int(self.sizes[index])
            remaining = self.num_nodes // size
            copies = 1
            while remaining > 0:
                take = min(copies, remaining)
                remaining -= take
                copies *= 2
                weight = take * size
                gain = take * int(values[index])
                candidate = np.full_like(table, _NEGATIVE)
                source = np.zeros(width, dtype=np.int64)
                if take < full:
                    candidate[take:full, weight:] = table[: full - take, : width - weight] + gain
                tail = table[max(full - take, 0) :, : width - weight]
                source[weight:] = np.argmax(tail, axis=0) + max(full - take, 0)
                candidate[full, weight:] = tail.max(axis=0) + gain
                better = candidate > table
                table = np.where(better, candidate, table)
                history.append((index, take, weight, better, source))
        if table[full, self.num_nodes] < _NEGATIVE // 2:
            return None
        row, column = full, self.num_nodes
        counts: dict[int, int] = {}
        for index, take, weight, better, source in reversed(history):
            if better[row, column]:
                size = int(self.sizes[index])
                counts[size] = counts.get(size, 0) + take
                row = int(source[column]) if row == full else row - take
                column -= weight
        return counts


def _validated_nodes(node_ids: Sequence[int]) -> tuple[int, ...]:
    nodes = tuple(sorted(int(node) for node in node_ids))
    duplicates = sorted({a for a, b in zip(nodes, nodes[1:]) if a == b})
    if duplicates:
        raise ConfigError(f"node_ids: node {duplicates[0]} is listed more than once; list each node once")
    if not nodes:
        raise ConfigError("node_ids: no nodes given; pass at least (f+1)*n0 node ids")
    return nodes


def _templates_by_size(templates: Sequence[PipelineTemplate]) -> dict[int, PipelineTemplate]:
    by_size: dict[int, PipelineTemplate] = {}
    for template in sorted(templates, key=lambda t: t.num_nodes):
        if template.num_nodes in by_size:
            raise ConfigError(
                f"templates: two templates for {template.num_nodes} nodes; pass one per node count"
            )
        by_size[template.num_nodes] = template
    if not by_size:
        raise PlanningError("no pipeline templates given; the model fits on no node count")
    return by_size
