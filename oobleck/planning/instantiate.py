"""Choose how many pipelines of each template to run on N nodes, and on which nodes.

We look for counts ``x_n`` (pipelines of the ``n``-node template) with ``sum x_n * n <= N``,
``sum x_n >= f + 1`` (f failures leave a replica of every layer) and the smallest step time after
exact batch distribution. Instead of enumerating every multiset (the original's 2e7 at 128 nodes),
we bisect on the makespan ``T``: at a given ``T`` a template absorbs at most ``cap_n(T)``
microbatches, and ``T`` is feasible when an unbounded knapsack over node counts can reach
``sum x_n * cap_n(T) >= B``. The knapsack is vectorised with numpy (binary-split item copies, the
pipeline count as a small saturating state ``min(count, f + 1)``); its table holds every node count
``0..N`` at once, so plans that leave nodes idle cost nothing extra to consider.

Idle nodes (hot spares). The rule: **minimise the makespan (the slowest pipeline's 1F1B time) over
every plan on at most N nodes; among plans with that makespan use the most nodes.** So a plan uses
every node whenever that is as fast as anything else (exactly the all-node plan of the exact
formulation), and leaves nodes idle only when using them all is infeasible (more pipeline stages
than the global batch has microbatches) or strictly slower. Ties go to more nodes because at an
equal makespan an extra pipeline is an extra replica of every layer and extra batch capacity, so a
later loss is absorbed without slowing the step; an idle node only waits. The unused nodes (the
highest ids) become the plan's ``spare_nodes``, which a reconfiguration takes first.

Assumptions:
    * Templates have distinct node counts; the smallest one is ``n0``.
    * The cross-pipeline gradient sync depends only weakly on the number of pipelines, so the choice
      minimises the slowest pipeline and the sync time is added afterwards.
    * Among combinations with the same makespan, the one with the most nodes, then the most spare
      capacity (then the fewest stages) wins; the knapsack's scan order makes it deterministic.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
_UNUSABLE = np.iinfo(np.int64).min
"""Marks a template that cannot meet the makespan (it is left out of the knapsack)."""
_EXACT_BUDGET = 30_000_000
"""Largest (items x states) of the exact stage-total knapsack: about 0.1 s and 30 MB to backtrack."""


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
    """Build the fastest plan on at most these nodes that keeps at least ``f + 1`` pipelines.

    Pipelines are ordered by (node count, position) and get contiguous runs of the sorted node ids,
    so every worker derives the same plan from the same inputs. Nodes left idle by the rule of the
    module docstring (infeasible or slower to use) are the highest ids and become the plan's
    ``spare_nodes``. 1024 nodes, ~90 templates and ``f <= 3`` take a few tens of milliseconds.

    Args:
        templates: One template per node count (``generate_templates`` output).
        node_ids: The nodes available; any order, no duplicates.
        fault_tolerance: ``f >= 0``.
        global_microbatches: ``B``, microbatches per step over all pipelines.
        microbatch_size: Samples per microbatch (recorded in the plan).
        profile: The model profile (for the gradient-sync term of the step time).
        hardware: The cluster hardware (same).

    Returns:
        The plan; its ``iteration_time_s`` is the slowest pipeline plus the gradient sync, and
        ``spare_nodes`` lists the nodes it leaves idle.

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
    logger.debug("instantiated %s on %d of %d nodes", dict(sorted(counts.items())), start, len(nodes))
    return Plan(
        pipelines=tuple(pipelines),
        spare_nodes=nodes[start:],
        global_microbatches=global_microbatches,
        microbatch_size=microbatch_size,
        fault_tolerance=fault_tolerance,
        iteration_time_s=plan_iteration_time_s(pipelines, profile, hardware),
    )


def choose_counts(
    templates: Sequence[PipelineTemplate],
    num_nodes: int,
    min_pipelines: int,
    global_microbatches: int,
    *,
    allow_idle: bool = True,
) -> dict[int, int]:
    """Pipelines per template size on at most ``num_nodes`` nodes with the smallest makespan.

    The optimal makespan is one of the values ``a_n + c_n * (b - 1)``. We start just below a
    fractional lower bound, grow geometrically to a feasible ``T``, then bisect, snapping every
    feasible ``T`` down to the largest candidate value below it; we stop when no candidate lies
    between the largest infeasible and the smallest feasible ``T``. Exact whenever ``B`` covers the
    stages of the highest-capacity combination (always when ``B >= N * S_n / n`` for every
    template) or the small-batch knapsack fits ``_EXACT_BUDGET``; otherwise a combination with more
    than ``B`` stages can hide a feasible mixed one and the makespan found may be higher.

    Among combinations with the optimal makespan the one using the most nodes wins (see the module
    docstring), so the result uses all ``num_nodes`` whenever that is as fast as anything else.

    Args:
        templates: Templates with distinct node counts.
        num_nodes: ``N``, the nodes available.
        min_pipelines: At least this many pipelines (``f + 1``).
        global_microbatches: ``B``.
        allow_idle: False demands that every node is used (the formulation before spare nodes).

    Returns:
        ``{num_nodes of template: number of pipelines}`` for the templates used.

    Raises:
        PlanningError: no combination of template sizes with enough pipelines fits in (or with
            ``allow_idle=False`` adds up to) ``num_nodes``, or ``B`` is too small for the stages of
            every combination.
    """
    knapsack = _Knapsack(templates, num_nodes, min_pipelines, global_microbatches, allow_idle)
    low = knapsack.lower_bound()
    top = float(knapsack.times(np.full(len(templates), global_microbatches)).max())
    step = max(abs(low), top) * 1e-3 if low <= 0 else low * 0.01
    while True:
        probe = min(low + step, top)
        values = knapsack.feasible_values(probe)
        if values is not None:
            high = knapsack.snap(probe)
            break
        if probe >= top:
            sizes = sorted(template.num_nodes for template in templates)
            amount = "at most" if allow_idle else "exactly"
            raise PlanningError(
                f"no combination of pipeline sizes {sizes} with >= {min_pipelines} pipelines uses "
                f"{amount} {num_nodes} nodes with global_microbatches={global_microbatches} (a pipeline "
                f"needs >= 1 microbatch per stage); change the node count or raise global_microbatches"
            )
        low, step = probe, step * 4
    while True:
        next_candidate = knapsack.next_value_above(low)
        if next_candidate >= high:
            return knapsack.backtrack(high, values)
        middle = max(0.5 * (low + high), next_candidate)
        found = knapsack.feasible_values(middle)
        if found is None:
            low = middle
        else:
            high, values = knapsack.snap(middle), found


@dataclass
class _Knapsack:
    """Feasibility of a makespan: the unbounded knapsack over template sizes for one ``T``."""

    templates: Sequence[PipelineTemplate]
    num_nodes: int
    min_pipelines: int
    global_microbatches: int
    allow_idle: bool = True
    """Whether a combination may use fewer than ``num_nodes`` nodes (then the most nodes win)."""

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

    def capacity(self, threshold: float) -> np.ndarray:
        return microbatch_capacity(self.base, self.slope, threshold, self.global_microbatches)

    def lower_bound(self) -> float:
        """A makespan below every feasible one: even the best microbatches-per-node rate misses B.

        Capacity within ``T`` is at most ``(T - a_n) / c_n + 1``, i.e. ``T >= a_n + c_n * (n * B / N
        - 1)`` for the template with the best rate; a relative margin absorbs rounding.
        """
        per_node = self.global_microbatches / self.num_nodes
        bound = self.base + self.slope * np.maximum(self.sizes * per_node - 1, 0)
        bound = np.maximum(bound, self.times(self.stages))
        lowest = float(bound.min())
        return lowest - 1e-9 * abs(lowest) - 1e-12

    def next_value_above(self, threshold: float) -> float:
        """Smallest candidate makespan strictly above ``threshold``."""
        following = np.maximum(self.capacity(threshold) + 1, self.stages)
        # NOTE: a template already able to take the whole batch never changes capacity again.
        growing = following <= self.global_microbatches
        if not growing.any():
            return float("inf")
        return float(self.times(following)[growing].min())

    def snap(self, threshold: float) -> float:
        """Largest candidate value <= ``threshold``; every template's capacity is the same there."""
        capacity = self.capacity(threshold)
        return float(self.times(capacity)[capacity >= 1].max())

    def feasible_values(self, threshold: float) -> _Proof | None:
        """A proof that ``threshold`` is feasible (knapsack values, exact-DP flag, nodes used), or None.

        Per node count (column) of the knapsack: the most capacity (ties: fewest stages) decides,
        unless that combination has more stages than B; then the fewest stages (ties: most
        capacity) gets a second chance, and if that is inconclusive a knapsack with the stage total
        as a third state decides exactly, when small enough (``_EXACT_BUDGET``). Unusable templates
        (capacity below their stages) are skipped. The proof is for the largest feasible column
        (only ``N`` itself without ``allow_idle``).
        """
        capacity = self.capacity(threshold)
        usable = capacity >= self.stages
        columns = np.arange(self.num_nodes + 1) if self.allow_idle else np.array([self.num_nodes])
        capacity_first = np.where(usable, capacity * self.stage_scale - self.stages, _UNUSABLE)
        best = self._table(capacity_first)[0][columns]
        reachable = best > _NEGATIVE // 2
        total_capacity = -(-best // self.stage_scale)
        total_stages = total_capacity * self.stage_scale - best
        fits = total_stages <= self.global_microbatches
        first_ok = reachable & fits & (total_capacity >= self.global_microbatches)
        undecided = reachable & ~fits
        found = _largest(columns, first_ok)
        if not undecided[columns > found].any():
            return None if found < 0 else (capacity_first, False, found)
        stages_first = np.where(usable, capacity - self.stages * self.capacity_scale, _UNUSABLE)
        best = self._table(stages_first)[0][columns]
        total_stages = -(best // self.capacity_scale)
        total_capacity = best + total_stages * self.capacity_scale
        fits = total_stages <= self.global_microbatches
        second_ok = undecided & fits & (total_capacity >= self.global_microbatches)
        exact_wanted = undecided & fits & (total_capacity < self.global_microbatches)
        second = _largest(columns, second_ok)
        if not exact_wanted[columns > max(found, second)].any() or (
            len(self._items(capacity_first)) * self._stage_table_size() > _EXACT_BUDGET
        ):
            if max(found, second) < 0:
                return None
            return (capacity_first, False, found) if found > second else (stages_first, False, second)
        table, _ = self._stage_table(capacity)
        exact_ok = exact_wanted & (table[-1, columns].max(axis=1) >= self.global_microbatches)
        third = _largest(columns, exact_ok)
        largest = max(found, second, third)
        if largest < 0:
            return None
        if largest == found:
            return capacity_first, False, found
        if largest == second:
            return stages_first, False, second
        return capacity, True, third

    def backtrack(self, threshold: float, proof: _Proof) -> dict[int, int]:
        """Template counts of the knapsack optimum that proved ``threshold`` feasible."""
        values, exact, column = proof
        counts: dict[int, int] = {}
        row, depth = self.min_pipelines, 0
        if exact:
            table, history = self._stage_table(values, record=True)
            depth = int(np.flatnonzero(table[-1, column] >= self.global_microbatches)[0])
        else:
            _, history = self._table(values, record=True)
        for (index, take, weight, used), better, source in reversed(history):
            if better[row, column, depth] if exact else better[row, column]:
                size = int(self.sizes[index])
                counts[size] = counts.get(size, 0) + take
                origin = source[column, depth] if exact else source[column]
                row = int(origin) if row == self.min_pipelines else row - take
                column, depth = column - weight, depth - used
        logger.debug("makespan %.6g s reached with %s", threshold, counts)
        return counts

    def _stage_table_size(self) -> int:
        return (self.min_pipelines + 1) * (self.num_nodes + 1) * (self.global_microbatches + 1)

    def _stage_table(self, capacity: np.ndarray, *, record: bool = False) -> tuple[np.ndarray, list[Any]]:
        """Exact knapsack: most capacity per (min(pipelines, f+1), nodes, total stages <= B)."""
        full, width, depth = self.min_pipelines, self.num_nodes + 1, self.global_microbatches + 1
        table = np.full((full + 1, width, depth), _NEGATIVE, dtype=np.int64)
        table[0, 0, 0] = 0
        history = []
        for index, take, weight, gain in self._items(np.where(capacity >= self.stages, capacity, _UNUSABLE)):
            used = take * int(self.stages[index])
            if used >= depth:
                continue
            shifted = table[:, : width - weight, : depth - used] + gain
            tail_start = max(full - take, 0)
            before = table.copy() if record else table
            if take < full:
                target = table[take:full, weight:, used:]
                np.maximum(target, shifted[: full - take], out=target)
            np.maximum(
                table[full, weight:, used:], shifted[tail_start:].max(axis=0), out=table[full, weight:, used:]
            )
            if record:
                source = np.zeros((width, depth), dtype=np.int64)
                source[weight:, used:] = np.argmax(shifted[tail_start:], axis=0) + tail_start
                history.append(((index, take, weight, used), table > before, source))
        return table, history

    def _table(self, values: np.ndarray, *, record: bool = False) -> tuple[np.ndarray, list[Any]]:
        """0/1 knapsack over binary-split template copies; state = (min(pipelines, f+1), nodes).

        Returns the best values at ``(f + 1, n)`` for every node count ``n = 0..N`` (below
        ``_NEGATIVE // 2`` where unreachable) and, when ``record``, per item the states it improved
        and, for the saturated row, the row it came from.
        """
        full, width = self.min_pipelines, self.num_nodes + 1
        table = np.full((full + 1, width), _NEGATIVE, dtype=np.int64)
        table[0, 0] = 0
        history = []
        for item in self._items(values):
            _, take, weight, gain = item
            shifted = table[:, : width - weight] + gain
            tail_start = max(full - take, 0)
            if record:
                before = table.copy()
                source = np.zeros(width, dtype=np.int64)
                source[weight:] = np.argmax(shifted[tail_start:], axis=0) + tail_start
            if take < full:
                np.maximum(table[take:full, weight:], shifted[: full - take], out=table[take:full, weight:])
            np.maximum(table[full, weight:], shifted[tail_start:].max(axis=0), out=table[full, weight:])
            if record:
                history.append(((item[0], take, weight, 0), table > before, source))
        return table[full], history

    def _items(self, values: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Binary-split copies ``(template index, copies, nodes, value)`` of each usable template."""
        items = []
        for index in np.flatnonzero(values != _UNUSABLE):
            size = int(self.sizes[index])
            remaining, copies = self.num_nodes // size, 1
            while remaining > 0:
                take = min(copies, remaining)
                items.append((int(index), take, take * size, take * int(values[index])))
                remaining -= take
                copies *= 2
        return items


_Proof = tuple[np.ndarray, bool, int]
"""Knapsack values that proved a makespan feasible, whether they are the exact stage-total DP's, and
the node count (knapsack column) the proof is for."""


def _largest(columns: np.ndarray, mask: np.ndarray) -> int:
    """The largest column where ``mask`` holds, or -1."""
    chosen = columns[mask]
    return int(chosen[-1]) if len(chosen) else -1


def _validated_nodes(node_ids: Sequence[int]) -> tuple[int, ...]:
    nodes = tuple(sorted(int(node) for node in node_ids))
    duplicates = sorted({a for a, b in itertools.pairwise(nodes) if a == b})
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
