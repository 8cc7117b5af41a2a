"""Tests for oobleck.planning.batch: exact min-max batch distribution."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.errors import PlanningError
from oobleck.planning.batch import _capacity, distribute_batch, microbatch_capacity
from oobleck.planning.plan import PipelineTemplate, Stage


def template(latencies: list[float]) -> PipelineTemplate:
    """A one-GPU-per-node template with one single-layer stage per node."""
    stages = tuple(
        Stage(first_layer=i, end_layer=i + 1, node=i, gpus=1, latency_s=latency, memory_bytes=0)
        for i, latency in enumerate(latencies)
    )
    return PipelineTemplate(num_nodes=len(latencies), gpus_per_node=1, stages=stages)


def makespan(templates: list[PipelineTemplate], counts: tuple[int, ...]) -> float:
    return max(t.iteration_time_s(b) for t, b in zip(templates, counts, strict=True))


def brute_force(templates: list[PipelineTemplate], total: int) -> float:
    ranges = [range(t.num_stages, total + 1) for t in templates]
    return min(makespan(templates, counts) for counts in itertools.product(*ranges) if sum(counts) == total)


latency = st.sampled_from([0.1, 0.2, 0.25, 0.3, 1.0, 0.7])
pipelines = st.lists(st.lists(latency, min_size=1, max_size=3), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(pipelines, st.integers(min_value=0, max_value=9))
def test_matches_brute_force(shapes: list[list[float]], extra: int) -> None:
    """The makespan equals the brute-force optimum and every invariant holds."""
    templates = [template(shape) for shape in shapes]
    total = sum(t.num_stages for t in templates) + extra
    counts = distribute_batch(templates, total)
    assert sum(counts) == total
    assert all(b >= t.num_stages for t, b in zip(templates, counts, strict=True))
    assert makespan(templates, counts) == brute_force(templates, total)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(latency, min_size=1, max_size=6), min_size=1, max_size=40), st.integers(0, 3000))
def test_large_batches_equal_plain_greedy(shapes: list[list[float]], extra: int) -> None:
    """With bisection in play the split is exactly the one-at-a-time greedy's, lowest index first."""
    templates = [template(shape) for shape in shapes]
    total = sum(t.num_stages for t in templates) + extra
    greedy = [t.num_stages for t in templates]
    for _ in range(extra):
        best = min(range(len(templates)), key=lambda i: (templates[i].iteration_time_s(greedy[i] + 1), i))
        greedy[best] += 1
    assert distribute_batch(templates, total) == tuple(greedy)


def plain_greedy(templates: list[PipelineTemplate], total: int) -> tuple[int, ...]:
    counts = [t.num_stages for t in templates]
    for _ in range(total - sum(counts)):
        best = min(range(len(templates)), key=lambda i: (templates[i].iteration_time_s(counts[i] + 1), i))
        counts[best] += 1
    return tuple(counts)


KINDS = [[0.1], [0.2], [0.1, 0.1], [0.25, 0.05], [0.3, 0.1, 0.2], [0.15, 0.15]]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(range(len(KINDS))), min_size=1, max_size=30), st.integers(0, 150))
def test_repeated_kinds_split_per_kind_like_the_plain_greedy(kinds: list[int], extra: int) -> None:
    """Interleaved pipelines of a few kinds (ties across kinds included) get the plain greedy's split."""
    shared = [template(shape) for shape in KINDS]
    templates = [shared[kind] for kind in kinds]
    total = sum(t.num_stages for t in templates) + extra
    assert distribute_batch(templates, total) == plain_greedy(templates, total)


def test_identical_pipelines_split_evenly_and_ties_go_to_lowest_index() -> None:
    """Equal pipelines get equal shares; the remainder goes to the lowest indices."""
    templates = [template([0.5, 0.5])] * 3
    assert distribute_batch(templates, 12) == (4, 4, 4)
    assert distribute_batch(templates, 13) == (5, 4, 4)


def test_faster_pipeline_gets_more() -> None:
    """A pipeline with half the stage latency takes about twice the microbatches."""
    counts = distribute_batch([template([0.2, 0.2]), template([0.1, 0.1])], 30)
    assert counts[1] > counts[0]
    assert sum(counts) == 30


def test_too_small_batch_names_the_numbers() -> None:
    """B below the total stage count is a PlanningError that names both numbers."""
    with pytest.raises(PlanningError, match=r"global_microbatches=3 .* 4 stages"):
        distribute_batch([template([0.1, 0.1]), template([0.1, 0.1])], 3)


def test_no_pipelines_is_an_error() -> None:
    """An empty pipeline list is rejected."""
    with pytest.raises(PlanningError, match="at least one pipeline"):
        distribute_batch([], 8)


def test_large_instance_is_fast() -> None:
    """8192 microbatches over 512 mixed pipelines take well under 200 ms (a few ms alone)."""
    templates = [template([0.1 + 0.01 * (i % 7)] * (1 + i % 8)) for i in range(512)]
    # NOTE: CPU time, so other work on a shared machine does not count (CI measured 0.36 s of wall
    # time for what takes a few ms alone).
    start = time.process_time()
    counts = distribute_batch(templates, 8192)
    elapsed = time.process_time() - start
    assert sum(counts) == 8192
    assert elapsed < 0.2


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(min_value=0.0, max_value=50.0),
    slope=st.sampled_from([0.0, 1e-9, 0.1, 0.25, 0.3, 1.0 / 3.0, 7.0]),
    threshold=st.floats(min_value=0.0, max_value=100.0),
    limit=st.integers(min_value=0, max_value=10_000),
)
def test_scalar_capacity_equals_the_vectorised_one(
    base: float, slope: float, threshold: float, limit: int
) -> None:
    """The plain-float capacity used by the bisection gives exactly microbatch_capacity's answer."""
    expected = microbatch_capacity(np.array([base]), np.array([slope]), threshold, limit)
    assert _capacity(base, slope, threshold, limit) == int(expected[0])


def test_equal_templates_split_alike_whether_shared_or_copied() -> None:
    """Pipelines sharing one template object get the same counts as pipelines with equal copies."""
    shapes = [[0.1, 0.3], [0.2, 0.2, 0.2], [0.05] * 4]
    shared = [template(shapes[i % 3]) for i in range(3)] * 40
    copied = [template(shapes[i % 3]) for i in range(120)]
    assert distribute_batch(shared, 4000) == distribute_batch(copied, 4000)
    assert sum(distribute_batch(shared, 4000)) == 4000
