"""Split the fixed global batch into integer microbatch counts, one per pipeline, exactly min-max.

Pipeline ``i`` with ``b`` microbatches takes ``T_i(b) = a_i + (b - 1) * c_i`` seconds (1F1B:
``a_i`` = sum of stage latencies, ``c_i`` = slowest stage). Every ``T_i`` is nondecreasing, so
handing out microbatches one at a time to the pipeline whose time after the increment is smallest
minimises the makespan ``max_i T_i(b_i)`` exactly. That greedy takes the ``R = B - sum S_i``
smallest values of the merged increment lists, in ``(value, pipeline index)`` order; we find the
value threshold by bisection so only the ties at the threshold go through a heap.

Assumptions:
    * Stage latencies are finite and >= 0; a pipeline needs at least one microbatch per stage.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from oobleck.errors import PlanningError
from oobleck.planning.plan import PipelineTemplate

_BISECTION_STEPS = 200


Kind = tuple[int, float, float]
"""What the split sees of a template: ``(num_stages, sum of latencies a, slowest latency c)``."""


def kind_of(template: PipelineTemplate) -> Kind:
    """The split's view of ``template``; pipelines of equal kinds are interchangeable to it.

    ``(num_stages, sum_latency_s, max_latency_s)``, kept on the template's layout.
    """
    return template.layout.kind


def distribute_batch(templates: Sequence[PipelineTemplate], global_microbatches: int) -> tuple[int, ...]:
    """Give each pipeline an integer microbatch count so all finish as close together as possible.

    The result minimises ``max_i templates[i].iteration_time_s(b_i)`` exactly (it equals the
    greedy that repeatedly tops up the pipeline finishing earliest after the top-up, ties to the
    lowest index), without a solver: ``B = 8192`` over 512 pipelines takes a few milliseconds.
    Pipelines of one kind (:func:`kind_of`) get ``b`` or ``b + 1``, the ``+1`` going to the
    first ones in pipeline order; :func:`split_by_kind` computes that per kind.

    Args:
        templates: One template per pipeline, in pipeline order (repeats allowed).
        global_microbatches: ``B``, the microbatches of one training step over all pipelines.

    Returns:
        ``b_i`` per pipeline in the given order, with ``sum(b) == B`` and ``b_i >= num_stages_i``.

    Raises:
        PlanningError: no pipelines, or ``B`` is smaller than the total number of stages.
    """
    if not templates:
        raise PlanningError("distribute_batch needs at least one pipeline, got none")
    kinds: dict[Kind, int] = {}
    kind_index = [kinds.setdefault(kind_of(t), len(kinds)) for t in templates]
    orders: list[list[int]] = [[] for _ in kinds]
    for position, kind in enumerate(kind_index):
        orders[kind].append(position)
    shapes = list(kinds)
    check_minimum(shapes, [len(order) for order in orders], global_microbatches)
    levels = split_by_kind(shapes, orders, global_microbatches)
    if levels is not None:
        return tuple(
            levels[kind][0] + (1 if rank < levels[kind][1] else 0)
            for kind, rank in zip(kind_index, _ranks(kind_index, len(shapes)), strict=True)
        )
    # NOTE: degenerate latencies (a kind whose step time does not grow with one more microbatch):
    # the per-pipeline greedy, which the kind levels equal everywhere else.
    multiplicity = [len(order) for order in orders]
    remaining = global_microbatches - sum(m * shape[0] for m, shape in zip(multiplicity, shapes, strict=True))
    extra = _extra_at_threshold(shapes, multiplicity, remaining, len(templates)) or [0] * len(shapes)
    counts = [shapes[kind][0] + extra[kind] for kind in kind_index]
    _top_up(shapes, kind_index, counts, remaining - sum(extra[kind] for kind in kind_index))
    return tuple(counts)


def check_minimum(shapes: Sequence[Kind], multiplicity: Sequence[int], global_microbatches: int) -> None:
    """Raise unless ``B`` gives every pipeline at least one microbatch per stage.

    Raises:
        PlanningError: ``B`` is smaller than the total number of stages.
    """
    minimum = sum(count * shape[0] for count, shape in zip(multiplicity, shapes, strict=True))
    if global_microbatches < minimum:
        raise PlanningError(
            f"global_microbatches={global_microbatches} is smaller than the {minimum} stages of "
            f"{sum(multiplicity)} pipelines (each needs >= 1 microbatch per stage); raise "
            f"global_microbatches to >= {minimum} or use fewer pipelines"
        )


def split_by_kind(
    shapes: Sequence[Kind], orders: Sequence[Sequence[int]], global_microbatches: int
) -> list[tuple[int, int]] | None:
    """The exact min-max split as per-kind levels: cost O(kinds x log), independent of pipelines.

    The greedy hands out increments in ``(time after it, pipeline order)`` order. All increments
    up to the threshold found by bisection are a prefix of that order and give every pipeline of a
    kind the same count; the few picks left all end at the next representable time, and go to the
    pipelines of the kinds that reach it first in pipeline order (a selection by bisection over
    the order keys, not a heap over pipelines).

    Args:
        shapes: The distinct kinds in use (:func:`kind_of`).
        orders: Per kind, the order keys of its pipelines, ascending; any integers that sort like
            the pipelines' positions (the caller's keys, e.g. positions themselves).
        global_microbatches: ``B``, at least the total number of stages (:func:`check_minimum`).

    Returns:
        Per kind ``(b, r)``: its first ``r`` pipelines (by order key) run ``b + 1`` microbatches,
        the others ``b``; or None where a kind's time does not grow strictly with its count at the
        threshold (zero or sub-rounding slowest stage), where the caller must use the per-pipeline
        greedy of :func:`distribute_batch`.
    """
    multiplicity = [len(order) for order in orders]
    remaining = global_microbatches - sum(m * shape[0] for m, shape in zip(multiplicity, shapes, strict=True))
    extra = _threshold_by_candidates(shapes, multiplicity, remaining)
    if extra is None:
        extra = _extra_at_threshold(shapes, multiplicity, remaining, sum(multiplicity), always=True)
    if extra is None:
        return None
    picks = remaining - sum(e * m for e, m in zip(extra, multiplicity, strict=True))
    levels = [(stages + e, 0) for (stages, _, _), e in zip(shapes, extra, strict=True)]
    if picks == 0:
        return levels
    finish = [
        _time(base, slope, count + 1) for (_, base, slope), (count, _) in zip(shapes, levels, strict=True)
    ]
    value = min(finish[k] for k in range(len(shapes)) if multiplicity[k])
    eligible = [k for k in range(len(shapes)) if multiplicity[k] and finish[k] == value]
    if picks > sum(multiplicity[k] for k in eligible):
        return None
    for k in eligible:
        _, base, slope = shapes[k]
        if not _time(base, slope, levels[k][0] + 2) > value:
            return None
    if len(eligible) == 1:
        levels[eligible[0]] = (levels[eligible[0]][0], picks)
        return levels
    # NOTE: the picks go to the `picks` smallest order keys over the eligible kinds: find the
    # smallest key x with picks keys <= x by bisection over the (integer) key range.
    low = min(orders[k][0] for k in eligible)
    high = max(orders[k][-1] for k in eligible)
    while low < high:
        middle = (low + high) // 2
        if sum(bisect.bisect_right(orders[k], middle) for k in eligible) >= picks:
            high = middle
        else:
            low = middle + 1
    for k in eligible:
        levels[k] = (levels[k][0], bisect.bisect_right(orders[k], low))
    return levels


_MAX_CANDIDATES = 256
"""Most candidate values :func:`_threshold_by_candidates` sorts before it leaves it to bisection."""


def _threshold_by_candidates(
    shapes: Sequence[Kind], multiplicity: Sequence[int], remaining: int
) -> list[int] | None:
    """:func:`_extra_at_threshold`'s answer from the few step times near the continuous optimum.

    The total increments ``E(T)`` change only at step times ``a + (b - 1) c``. Relaxing the floors,
    ``E`` is within ``sum(m)`` of ``T * sum(m / c) - sum(m (a / c - 1 + S))``, which brackets the
    jump past ``remaining`` between two thresholds about one slowest stage apart (checked
    exactly, widened if needed); the step times inside are sorted and searched with exact counts,
    a dozen evaluations instead of ~60 float bisection steps. None when a kind's slowest stage is
    not positive or the bracket holds too many step times (the caller bisects instead).
    """
    used = [k for k in range(len(shapes)) if multiplicity[k]]
    if any(shapes[k][2] <= 0 for k in used):
        return None
    limit = max(shapes[k][0] for k in used) + remaining

    rows = [(multiplicity[k], *shapes[k]) for k in used]

    def total(threshold: float) -> int:
        # NOTE: sum(m * min(max(capacity - stages, 0), remaining)) as a loop: a re-plan calls this
        # about ten times, and the generator and builtins were most of its cost.
        count = 0
        for times, stages, base, slope in rows:
            extra = _capacity(base, slope, threshold, limit) - stages
            if extra > 0:
                count += times * (extra if extra < remaining else remaining)
        return count

    rate = sum(multiplicity[k] / shapes[k][2] for k in used)
    offset = sum(multiplicity[k] * (shapes[k][1] / shapes[k][2] - 1 + shapes[k][0]) for k in used)
    low = (remaining + offset) / rate
    high = (remaining + 1 + sum(multiplicity) + offset) / rate
    width = high - low
    # NOTE: ``checked`` remembers that the loop already found total(low) <= remaining, so it is not
    # counted twice (each count is one capacity per kind).
    checked = False
    for _ in range(8):
        if low <= 0:
            break
        if total(low) <= remaining:
            checked = True
            break
        low -= width
        width *= 2
    low = max(low, 0.0)
    if not checked and total(low) > remaining:
        return None
    for _ in range(8):
        if total(high) > remaining:
            break
        high += width
        width *= 2
    else:
        return None
    values: set[float] = set()
    for k in used:
        _, base, slope = shapes[k]
        first = _capacity(base, slope, low, limit) + 1
        last = _capacity(base, slope, high, limit)
        if len(values) + last - first + 1 > _MAX_CANDIDATES:
            return None
        values.update(_time(base, slope, b) for b in range(first, last + 1))
    candidates = sorted(value for value in values if low < value <= high)
    # NOTE: E is constant between candidates: find the first candidate where it passes remaining.
    lo, hi = 0, len(candidates)
    while lo < hi:
        middle = (lo + hi) // 2
        if total(candidates[middle]) > remaining:
            hi = middle
        else:
            lo = middle + 1
    if lo == len(candidates):
        return None
    below = candidates[lo - 1] if lo > 0 else low
    return _count_at_most(shapes, below, remaining)


def _ranks(kind_index: Sequence[int], kinds: int) -> list[int]:
    """Per pipeline: how many earlier pipelines share its kind."""
    seen = [0] * kinds
    ranks = []
    for kind in kind_index:
        ranks.append(seen[kind])
        seen[kind] += 1
    return ranks


def _time(base: Any, slope: Any, microbatches: Any) -> Any:
    """``iteration_time_s`` (scalars or arrays), with the same float operations as the template."""
    return base + (microbatches - 1) * slope


def microbatch_capacity(base: np.ndarray, slope: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Per template: the most microbatches ``b`` in ``0..limit`` with ``a + (b - 1) * c <= threshold``.

    Shared with instantiation, which asks how much of the batch each template can absorb within a
    makespan. The closed form ``floor((T - a) / c) + 1`` can be off by one after rounding, so it is
    corrected against the exact expression ``iteration_time_s`` uses; a flat template (``c = 0``)
    gets ``limit`` when it fits at all.

    Args:
        base: ``a``, the sum of stage latencies per template (seconds).
        slope: ``c``, the slowest stage latency per template (seconds).
        threshold: The makespan ``T`` (seconds).
        limit: Upper bound on the answer (the global batch is a natural one).

    Returns:
        int64 array of capacities, one per template.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.floor((threshold - base) / slope) + 1
    raw = np.where(slope > 0, raw, np.where(base <= threshold, limit, 0))
    count = np.clip(np.nan_to_num(raw, nan=0.0, posinf=limit, neginf=0), 0, limit).astype(np.int64)
    count -= (count > 0) & (_time(base, slope, count) > threshold)
    count += (count < limit) & (_time(base, slope, count + 1) <= threshold)
    return count


def _capacity(base: float, slope: float, threshold: float, limit: int) -> int:
    """:func:`microbatch_capacity` for one template, with the same float operations.

    Python floats are IEEE doubles like numpy's float64, and every branch below mirrors a numpy
    step (``floor + 1``, ``nan_to_num``, ``clip``, the two exact corrections), so the answers are
    identical; a scalar avoids ~15 numpy calls per bisection step.
    """
    if slope > 0:
        quotient = (threshold - base) / slope
        if math.isnan(quotient) or quotient < 0:
            count = 0
        elif quotient >= limit:
            count = limit
        else:
            count = math.floor(quotient) + 1
    else:
        count = limit if base <= threshold else 0
    # NOTE: ``_time`` inlined (the same float operations: ``(count + 1) - 1`` is exact in ints).
    if count > 0 and base + (count - 1) * slope > threshold:
        count -= 1
    if count < limit and base + count * slope <= threshold:
        count += 1
    return count


def _count_at_most(shapes: Sequence[Kind], threshold: float, cap: int) -> list[int]:
    """Per kind: how many increments beyond ``num_stages`` end at a time <= ``threshold``."""
    limit = max(stages for stages, _, _ in shapes) + cap
    return [
        min(max(_capacity(base, slope, threshold, limit) - stages, 0), cap) for stages, base, slope in shapes
    ]


def _extra_at_threshold(
    shapes: Sequence[Kind],
    multiplicity: Sequence[int],
    remaining: int,
    pipelines: int,
    *,
    always: bool = False,
) -> list[int] | None:
    """Per kind: increments with value <= the largest threshold whose total stays <= ``remaining``.

    Those increments are a prefix of the greedy's pick order, so taking them at once is safe.
    Returns None when even a zero threshold has too many, or (``always``) the bisection did not
    narrow to adjacent floats; without ``always``, also when the picks are few enough for a heap.
    """
    if remaining <= 4 * pipelines and not always:
        # NOTE: few picks: the heap alone is cheaper than ~60 bisection steps.
        return None

    def total(counts: list[int]) -> int:
        return sum(count * times for count, times in zip(counts, multiplicity, strict=True))

    low = 0.0
    high = max(_time(base, slope, stages + remaining) for stages, base, slope in shapes)
    best = _count_at_most(shapes, low, remaining)
    if total(best) > remaining:
        return None
    if total(_count_at_most(shapes, high, remaining)) <= remaining:
        return _count_at_most(shapes, high, remaining)
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            return best
        count = _count_at_most(shapes, middle, remaining)
        if total(count) <= remaining:
            low, best = middle, count
        else:
            high = middle
    return None if always else best


def _top_up(shapes: Sequence[Kind], kind_index: Sequence[int], counts: list[int], picks: int) -> None:
    """Greedy for the last ``picks`` increments (the ties at the threshold), in place."""

    def finish(index: int) -> float:
        _, base, slope = shapes[kind_index[index]]
        return _time(base, slope, counts[index] + 1)

    heap = [(finish(i), i) for i in range(len(counts))]
    heapq.heapify(heap)
    for _ in range(picks):
        _, index = heapq.heappop(heap)
        counts[index] += 1
        heapq.heappush(heap, (finish(index), index))
