"""Tests for oobleck.planning.instantiate: exact template counts and node assignment."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.hardware import get_hardware
from oobleck.planning.instantiate import choose_counts, guaranteed_range, instantiate
from oobleck.planning.plan import PipelineTemplate, Plan, Stage
from oobleck.planning.profile import LayerProfile, ModelProfile

HARDWARE = get_hardware("cpu")


def profile(num_layers: int) -> ModelProfile:
    """A tiny model of identical blocks."""
    layer = {
        "kind": "block",
        "forward_s": 0.01,
        "backward_s": 0.02,
        "param_bytes": 1000,
        "grad_bytes": 1000,
        "optimizer_bytes": 2000,
        "activation_bytes": 100,
        "output_bytes": 100,
    }
    layers = tuple(LayerProfile(name=f"block.{i}", **layer) for i in range(num_layers))
    return ModelProfile(
        model="tiny", config_fingerprint="x", device="cpu", dtype="float32", microbatch_size=1, layers=layers
    )


def template(num_nodes: int, num_layers: int, overhead_s: float = 0.002) -> PipelineTemplate:
    """One stage per node, layers split as evenly as possible, latency = layers * 30 ms + overhead."""
    stages = []
    for node in range(num_nodes):
        first = node * num_layers // num_nodes
        end = (node + 1) * num_layers // num_nodes
        latency = (end - first) * 0.03 + overhead_s
        stages.append(
            Stage(first_layer=first, end_layer=end, node=node, gpus=1, latency_s=latency, memory_bytes=0)
        )
    return PipelineTemplate(num_nodes=num_nodes, gpus_per_node=1, stages=tuple(stages))


def templates(smallest: int, largest: int, num_layers: int = 12) -> list[PipelineTemplate]:
    return [template(n, num_layers) for n in range(smallest, largest + 1)]


def best_makespan(
    candidates: list[PipelineTemplate], nodes: int, pipelines: int, total: int, *, exact: bool = True
) -> tuple[float, int]:
    """Brute force over every multiset of template sizes on exactly (or at most) ``nodes`` nodes.

    Returns the best makespan and the most nodes a multiset reaching it uses.
    """
    best = (float("inf"), 0)

    def visit(index: int, left: int, chosen: list[PipelineTemplate]) -> None:
        nonlocal best
        if index == len(candidates):
            if (
                (left == 0 or not exact)
                and len(chosen) >= pipelines
                and sum(t.num_stages for t in chosen) <= total
            ):
                counts = distribute_batch(chosen, total)
                makespan = max(t.iteration_time_s(b) for t, b in zip(chosen, counts, strict=True))
                best = min(best, (makespan, -(nodes - left)))
            return
        size = candidates[index].num_nodes
        for count in range(left // size + 1):
            visit(index + 1, left - count * size, chosen + [candidates[index]] * count)

    visit(0, nodes, [])
    return best[0], -best[1]


def check_plan(plan: Plan, nodes: list[int], fault_tolerance: int, total: int, num_layers: int) -> None:
    """Invariants every plan must satisfy."""
    assert sorted(node for p in plan.pipelines for node in p.nodes) == sorted(nodes)
    assert len(plan.pipelines) >= fault_tolerance + 1
    assert sum(p.microbatches for p in plan.pipelines) == total
    for pipeline in plan.pipelines:
        layers = [layer for stage in pipeline.template.stages for layer in stage.layers]
        assert layers == list(range(num_layers))
        assert pipeline.microbatches >= pipeline.template.num_stages


@settings(max_examples=30, deadline=None)
@given(
    smallest=st.integers(1, 3),
    span=st.integers(0, 3),
    nodes=st.integers(4, 13),
    fault_tolerance=st.integers(0, 2),
    slack=st.integers(0, 40),
    overheads=st.lists(st.sampled_from([0.0, 0.002, 0.05]), min_size=4, max_size=4),
)
def test_makespan_matches_brute_force(
    smallest: int, span: int, nodes: int, fault_tolerance: int, slack: int, overheads: list[float]
) -> None:
    """The chosen counts reach the brute-force optimum, small batches (B < stages of some mixes) included."""
    candidates = [template(n, 12, overheads[i]) for i, n in enumerate(range(smallest, smallest + span + 1))]
    if nodes < (fault_tolerance + 1) * smallest:
        return
    total = 2 + slack
    for exact in (True, False):
        expected, most_nodes = best_makespan(candidates, nodes, fault_tolerance + 1, total, exact=exact)
        if expected == float("inf"):
            with pytest.raises(PlanningError):
                choose_counts(candidates, nodes, fault_tolerance + 1, total, allow_idle=not exact)
            continue
        counts = choose_counts(candidates, nodes, fault_tolerance + 1, total, allow_idle=not exact)
        chosen = [t for t in candidates for _ in range(counts.get(t.num_nodes, 0))]
        assert sum(t.num_nodes for t in chosen) == most_nodes
        assert len(chosen) >= fault_tolerance + 1
        split = distribute_batch(chosen, total)
        assert max(t.iteration_time_s(b) for t, b in zip(chosen, split, strict=True)) == expected


def test_plan_invariants_and_contiguous_sorted_assignment() -> None:
    """All nodes are used once, pipelines ascend by size and hold contiguous runs of sorted ids."""
    node_ids = [17, 3, 9, 12, 5, 30, 2, 8, 11, 21]
    plan = instantiate(
        templates(2, 5),
        node_ids,
        fault_tolerance=2,
        global_microbatches=64,
        microbatch_size=4,
        profile=profile(12),
        hardware=HARDWARE,
    )
    check_plan(plan, node_ids, 2, 64, 12)
    flattened = [node for p in plan.pipelines for node in p.nodes]
    assert flattened == sorted(node_ids)
    sizes = [len(p.nodes) for p in plan.pipelines]
    assert sizes == sorted(sizes)
    assert plan.iteration_time_s >= max(p.iteration_time_s for p in plan.pipelines)


def test_same_inputs_same_plan() -> None:
    """Repeated calls, and any order of node ids, give equal plans."""
    arguments = {
        "fault_tolerance": 1,
        "global_microbatches": 40,
        "microbatch_size": 1,
        "profile": profile(12),
        "hardware": HARDWARE,
    }
    first = instantiate(templates(2, 6), list(range(11)), **arguments)
    again = instantiate(templates(2, 6), list(reversed(range(11))), **arguments)
    assert first == again
    assert first.to_dict() == again.to_dict()


def test_small_batch_falls_back_to_fewer_stages() -> None:
    """When many small pipelines need more microbatches than B, fewer larger ones use every node, or
    with idle nodes allowed the faster plan leaves two nodes as spares."""
    two_nodes = template(2, 4)
    fast_stages = tuple(
        Stage(
            first_layer=s.first_layer, end_layer=s.end_layer, node=0, gpus=1, latency_s=0.01, memory_bytes=0
        )
        for s in two_nodes.stages
    )
    one_node = PipelineTemplate(num_nodes=1, gpus_per_node=2, stages=fast_stages)
    assert choose_counts([one_node, two_nodes], 4, 1, 4, allow_idle=False) == {2: 2}
    assert choose_counts([one_node, two_nodes], 4, 1, 4) == {1: 2}


def test_too_few_nodes_names_the_bound() -> None:
    """N < (f+1)*n0 is a one-line PlanningError naming the bound and a fix."""
    with pytest.raises(PlanningError, match=r"needs >= \(f\+1\)\*n0 = 9 nodes \(n0=3\), got 8; lower"):
        instantiate(
            templates(3, 5),
            range(8),
            fault_tolerance=2,
            global_microbatches=64,
            microbatch_size=1,
            profile=profile(12),
            hardware=HARDWARE,
        )


def test_duplicate_node_is_a_config_error() -> None:
    """A node listed twice is rejected with its id."""
    with pytest.raises(ConfigError, match="node 4 is listed more than once"):
        instantiate(
            templates(1, 3),
            [1, 4, 4, 5],
            fault_tolerance=0,
            global_microbatches=16,
            microbatch_size=1,
            profile=profile(12),
            hardware=HARDWARE,
        )


def test_unreachable_node_count_is_a_planning_error() -> None:
    """Only 3-node templates cannot use 7 nodes exactly; with idle nodes allowed one node is left over."""
    with pytest.raises(PlanningError, match="uses exactly 7 nodes"):
        choose_counts([template(3, 12)], 7, 1, 64, allow_idle=False)
    assert choose_counts([template(3, 12)], 7, 1, 64) == {3: 2}


def test_guaranteed_range() -> None:
    """The guaranteed range is ((f+1)*n0, N)."""
    assert guaranteed_range(templates(3, 8), 2, 40) == (9, 40)


@pytest.mark.timeout(60)
def test_large_instance_is_fast() -> None:
    """1024 nodes, 90 templates and f = 3 plan in well under half a second (tens of ms alone)."""
    candidates = templates(2, 91, num_layers=96)
    # NOTE: CPU time, so other work on a shared machine does not count.
    start = time.process_time()
    counts = choose_counts(candidates, 1024, 4, 8192)
    elapsed = time.process_time() - start
    assert sum(size * count for size, count in counts.items()) == 1024
    assert sum(counts.values()) >= 4
    assert elapsed < 0.5
