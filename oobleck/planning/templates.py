"""Pipeline templates: the fastest memory-feasible stage split for every pipeline size n0..n_max.

A template for ``n`` nodes of ``g`` devices splits the model's ``L`` layers into contiguous stages and
places them on those nodes. It minimises the 1F1B step time ``sum(latency) + (m - 1) * max(latency)``
of the cost model (:mod:`oobleck.planning.cost`), exactly, subject to every stage's memory fitting.

Assumptions:
    * Search space: every stage uses ``t`` devices of one node, ``t`` a power of two dividing ``g``
      and at most ``max_gpus_per_stage``; the same ``t`` for every stage of a template. Each node
      then hosts ``k = g / t`` stages and the template has ``S = n k <= L`` stages. One ``t`` per
      template keeps the search exact and is what tensor-parallel runtimes execute.
    * The profile is valid (:class:`~oobleck.planning.profile.ModelProfile` checks that the embedding
      is layer 0 and the head the last layer), so contiguous stages put the embedding in the first
      stage and the head in the last without further constraints.

Algorithm (exact): stages are numbered from the end; back-index ``b = 0`` is the last stage. Its
link to the next stage (none for ``b = 0``, inter-node when ``b % k == 0``, else intra-node), its node
(``n - 1 - b // k``) and its microbatches in flight (``b + 1``) depend on ``b`` only, so one dynamic
programme ``best[b][i] = min_j lat_b(i, j) + best[b - 1][j]`` over suffixes ``[i, L)`` answers every
stage count at once. For a cap ``c`` on stage latency the min-sum programme gives ``f_c(S)``, and
``T* = min_c f_c(S) + (m - 1) c`` over the distinct stage latencies ``c`` (the optimum's own maximum
is one of them). Caps are tried in ascending order from each ``S``'s smallest feasible bottleneck and
pruned by the lower bound ``f_inf(S) + (m - 1) c``; each pass is vectorised over a band of stage
widths that the cap allows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.cost import (
    SendKind,
    combine_latency_s,
    layer_tables,
    send_bandwidth_bytes_per_s,
    send_s,
    stage_memory_bytes,
)
from oobleck.planning.hardware import GIB, HardwareSpec
from oobleck.planning.plan import PipelineTemplate, Stage
from oobleck.planning.profile import ModelProfile

logger = logging.getLogger(__name__)

_REL_TOL = 1e-13
"""Relative slack of the pruning test: caps that could only win by float rounding are skipped."""

_UNLIMITED = np.iinfo(np.int64).max


def microbatches_for(
    num_stages: int, num_nodes: int, *, global_microbatches: int | None, total_nodes: int | None
) -> int:
    """Microbatches ``m`` a template is optimised for.

    With a global batch, a pipeline of ``n`` of ``N`` nodes runs about its share ``ceil(B n / N)``
    (at least one per stage, which 1F1B needs). Without one, ``4 S``: the original Oobleck's
    ``N_b = 4 S`` convention, which weighs the slowest stage realistically without knowing the batch.

    Args:
        num_stages: ``S``.
        num_nodes: ``n``.
        global_microbatches: ``B``, or ``None``.
        total_nodes: ``N``; ``None`` uses ``n`` (a lone pipeline runs the whole batch).

    Returns:
        ``m >= num_stages``.
    """
    if global_microbatches is None:
        return 4 * num_stages
    total = total_nodes if total_nodes is not None else num_nodes
    return max(num_stages, -(-global_microbatches * num_nodes // total))


def generate_templates(
    profile: ModelProfile,
    hardware: HardwareSpec,
    *,
    max_nodes: int,
    global_microbatches: int | None = None,
    total_nodes: int | None = None,
    max_gpus_per_stage: int | None = None,
) -> tuple[PipelineTemplate, ...]:
    """Build the best template for every node count from ``n0`` to ``n_max``.

    Deterministic: ties go to the smaller devices-per-stage ``t``, then to the first split found.

    Args:
        profile: Per-layer costs.
        hardware: Node type (devices per node, memory, links).
        max_nodes: Largest pipeline to plan for.
        global_microbatches: ``B``; with it each template is optimised for its share of the batch.
        total_nodes: ``N`` nodes of the job, used with ``global_microbatches`` (default ``max_nodes``);
            ignored without it.
        max_gpus_per_stage: Largest tensor-parallel degree ``t`` (default: devices per node).

    Returns:
        Templates for ``n0, n0 + 1, ..., n_max`` in ascending order, where ``n0`` is the fewest nodes
        with a memory-feasible template and ``n_max`` is at most ``max_nodes`` and ends the first run
        of feasible node counts.

    Raises:
        ConfigError: a bad argument.
        PlanningError: the model fits on no pipeline of up to ``max_nodes`` nodes.
    """
    _check_arguments(max_nodes, global_microbatches, total_nodes, max_gpus_per_stage)
    if global_microbatches is not None and total_nodes is None:
        total_nodes = max_nodes
    started = time.perf_counter()
    gpus = hardware.gpus_per_node
    limit = max_gpus_per_stage if max_gpus_per_stage is not None else gpus
    degrees = [1 << p for p in range(gpus.bit_length()) if (1 << p) <= limit and gpus % (1 << p) == 0]
    best: dict[int, tuple[float, PipelineTemplate]] = {}
    for degree in degrees:
        search = _DegreeSearch(profile, hardware, degree, max_nodes)
        incumbent = {nodes: value for nodes, (value, _) in best.items()}
        best.update(search.run(global_microbatches, total_nodes, incumbent))
    if not best:
        raise PlanningError(_no_fit_message(profile, hardware, max_nodes))
    first = min(best)
    last = first
    while last + 1 in best:
        last += 1
    beyond = sorted(n for n in best if n > last)
    if beyond:
        logger.warning(
            "no feasible template for %d nodes; templates stop at %d (%s also fit)", last + 1, last, beyond
        )
    logger.debug("templates for %d..%d nodes in %.3f s", first, last, time.perf_counter() - started)
    return tuple(best[n][1] for n in range(first, last + 1))


def _send_kind(back_index: int, per_node: int) -> SendKind:
    if back_index == 0:
        return "none"
    return "inter" if back_index % per_node == 0 else "intra"


@dataclass(slots=True)
class _Pass:
    """One dynamic-programming pass: per back-index, the value at layer 0 and the chosen widths."""

    first_values: np.ndarray
    choices: list[np.ndarray]


class _DegreeSearch:
    """Exact template search for one devices-per-stage ``t`` and every node count it allows.

    Matrices are banded: entry ``[i, d]`` describes the stage ``[i, i + d)``.
    """

    def __init__(self, profile: ModelProfile, hardware: HardwareSpec, degree: int, max_nodes: int) -> None:
        self.profile = profile
        self.degree = degree
        self.per_node = hardware.gpus_per_node // degree
        self.layers = profile.num_layers
        self.max_nodes = min(max_nodes, self.layers // self.per_node)
        self.max_stages = self.max_nodes * self.per_node
        if self.max_nodes < 1:
            return
        self.tables = tables = layer_tables(profile)
        size = self.layers + 1
        starts = np.arange(size)[:, None]
        ends = starts + np.arange(size)[None, :]
        valid = (ends > starts) & (ends <= self.layers)
        self.ends = np.minimum(ends, self.layers)
        compute = tables.compute_prefix_s[self.ends] - tables.compute_prefix_s[starts]
        speedup = hardware.tensor_parallel_speedup(degree)
        output = tables.output_bytes[np.maximum(self.ends - 1, 0)]
        kinds = {_send_kind(b, self.per_node) for b in range(self.max_stages)}
        self.latency: dict[str, np.ndarray] = {}
        for kind in sorted(kinds):
            sent = send_s(output, send_bandwidth_bytes_per_s(hardware, kind))
            self.latency[kind] = np.where(valid, combine_latency_s(compute, speedup, sent), np.inf)
        # NOTE: (state + f * act) // t <= M  <=>  state + f * act <= M * t + t - 1, solved for f.
        budget = hardware.usable_memory_bytes * degree + degree - 1
        state = tables.state_prefix_bytes[self.ends] - tables.state_prefix_bytes[starts]
        act = tables.activation_prefix_bytes[self.ends] - tables.activation_prefix_bytes[starts]
        room = budget - state
        in_flight = np.where(act > 0, room // np.maximum(act, 1), np.where(room >= 0, _UNLIMITED, -1))
        self.max_in_flight = np.where(valid & (room >= 0), in_flight, -1)
        # Stage latency never drops below its compute time, which grows with the width d.
        narrowest = np.where(valid, compute / speedup, np.inf).min(axis=0)
        self.min_latency_by_width = np.minimum.accumulate(narrowest[::-1])[::-1][1:]
        usable = self.max_in_flight >= 1
        values = np.concatenate([matrix[usable] for matrix in self.latency.values()])
        self.caps = np.unique(values[np.isfinite(values)])
        self.max_width = int(np.flatnonzero(usable.any(axis=0)).max(initial=0))

    def run(
        self, global_microbatches: int | None, total_nodes: int | None, incumbent: dict[int, float]
    ) -> dict[int, tuple[float, PipelineTemplate]]:
        """(objective, template) per node count where this degree beats ``incumbent`` strictly.

        ``incumbent`` holds the best objectives of smaller degrees; starting from them prunes caps
        that cannot win and leaves ties to the smaller degree.
        """
        if self.max_nodes < 1 or self.max_width == 0:
            return {}
        counts = np.arange(1, self.max_nodes + 1) * self.per_node
        micro = np.array(
            [
                microbatches_for(int(s), n, global_microbatches=global_microbatches, total_nodes=total_nodes)
                for n, s in enumerate(counts, start=1)
            ],
            dtype=np.float64,
        )
        bottleneck = self._pass(np.inf, self.max_stages, self.max_width, maximum=True)
        unconstrained = self._pass(np.inf, self.max_stages, self.max_width, maximum=False)
        low = bottleneck.first_values[counts - 1]
        bound = unconstrained.first_values[counts - 1]
        feasible = np.isfinite(low)
        objective = np.array([incumbent.get(n, np.inf) for n in range(1, self.max_nodes + 1)])
        splits: dict[int, list[tuple[int, int, int]]] = {}
        feasible_at = np.flatnonzero(feasible)
        for found in (bottleneck, unconstrained):
            self._offer(found, feasible_at, counts=counts, micro=micro, objective=objective, splits=splits)
        cursor = np.searchsorted(self.caps, np.where(feasible, low, 0.0))
        passes = 0
        while True:
            inside = cursor < len(self.caps)
            cap_at = self.caps[np.minimum(cursor, len(self.caps) - 1)]
            active = feasible & inside & (bound + (micro - 1) * cap_at < objective * (1 - _REL_TOL))
            if not active.any():
                break
            position = int(cursor[active].min())
            group = np.flatnonzero(active & (cursor == position))
            cap = float(self.caps[position])
            width = min(self.max_width, int(np.searchsorted(self.min_latency_by_width, cap, side="right")))
            found = self._pass(cap, int(counts[group].max()), width, maximum=False)
            passes += 1
            self._offer(found, group, counts=counts, micro=micro, objective=objective, splits=splits)
            cursor[group] = position + 1
        logger.debug("t=%d: %d capped passes for %d node counts", self.degree, passes, int(feasible.sum()))
        return {
            int(index) + 1: (float(objective[index]), self._template(int(index) + 1, splits[index]))
            for index in sorted(splits)
        }

    def _pass(self, cap: float, stages: int, width: int, *, maximum: bool) -> _Pass:
        """DP over back-indices ``0 .. stages-1`` with stage latency <= ``cap`` and width <= ``width``."""
        size = self.layers + 1
        columns = slice(1, width + 1)
        capped = {
            kind: np.where(m[:, columns] <= cap, m[:, columns], np.inf) for kind, m in self.latency.items()
        }
        max_in_flight = self.max_in_flight[:, columns]
        successor = self.ends[:, columns]
        rows = np.arange(size)
        previous = np.full(size, np.inf)
        previous[self.layers] = 0.0
        first_values = np.full(stages, np.inf)
        choices = []
        for back in range(stages):
            stage = np.where(max_in_flight > back, capped[_send_kind(back, self.per_node)], np.inf)
            rest = previous[successor]
            candidates = np.maximum(stage, rest) if maximum else stage + rest
            choice = candidates.argmin(axis=1)
            previous = candidates[rows, choice]
            choices.append(choice)
            first_values[back] = previous[0]
        return _Pass(first_values=first_values, choices=choices)

    def _offer(
        self,
        found: _Pass,
        indices: np.ndarray,
        *,
        counts: np.ndarray,
        micro: np.ndarray,
        objective: np.ndarray,
        splits: dict[int, list[tuple[int, int, int]]],
    ) -> None:
        """For each node-count index, keep the pass's split if its true 1F1B time beats the best so far.

        Index ``i`` stands for ``counts[i]`` stages run with ``micro[i]`` microbatches; ``objective``
        and ``splits`` hold the best so far and are updated in place.
        """
        for index in indices:
            stages = int(counts[index])
            if not np.isfinite(found.first_values[stages - 1]):
                continue
            split = []
            start = 0
            for back in range(stages - 1, -1, -1):
                end = start + int(found.choices[back][start]) + 1
                split.append((start, end, back))
                start = end
            latencies = [self._latency(first, end, back) for first, end, back in split]
            value = sum(latencies) + (micro[index] - 1) * max(latencies)
            if value < objective[index]:
                objective[index] = value
                splits[index] = split

    def _latency(self, first: int, end: int, back: int) -> float:
        return float(self.latency[_send_kind(back, self.per_node)][first, end - first])

    def _template(self, nodes: int, split: list[tuple[int, int, int]]) -> PipelineTemplate:
        stages = tuple(
            Stage(
                first_layer=first,
                end_layer=end,
                node=nodes - 1 - back // self.per_node,
                gpus=self.degree,
                latency_s=self._latency(first, end, back),
                memory_bytes=self.tables.memory_bytes(first, end, self.degree, back + 1),
            )
            for first, end, back in split
        )
        return PipelineTemplate(num_nodes=nodes, gpus_per_node=self.per_node * self.degree, stages=stages)


def _check_arguments(
    max_nodes: int,
    global_microbatches: int | None,
    total_nodes: int | None,
    max_gpus_per_stage: int | None,
) -> None:
    for name, value in (
        ("max_nodes", max_nodes),
        ("global_microbatches", global_microbatches),
        ("total_nodes", total_nodes),
        ("max_gpus_per_stage", max_gpus_per_stage),
    ):
        if value is None and name != "max_nodes":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _no_fit_message(profile: ModelProfile, hardware: HardwareSpec, max_nodes: int) -> str:
    node_bytes = hardware.usable_memory_bytes * hardware.gpus_per_node
    needed = math.ceil(profile.total_state_bytes / node_bytes)
    largest = max(range(profile.num_layers), key=lambda i: profile.layers[i].state_bytes)
    per_device = stage_memory_bytes(profile, largest, largest + 1, hardware.gpus_per_node, 1)
    return (
        f"model {profile.model!r} needs more memory than {max_nodes} {hardware.name} node(s) offer "
        f"({hardware.gpus_per_node} x {_size(hardware.usable_memory_bytes)} usable each): "
        f"its state is {_size(profile.total_state_bytes)} (>= {needed} node(s)), its largest layer "
        f"{profile.layers[largest].name!r} needs {_size(per_device)} per device with one "
        f"microbatch; use more nodes, a smaller microbatch size or devices with more memory"
    )


def _size(num_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1, e.g. ``'1.5 GiB'``, ``'12.0 MiB'``."""
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"
