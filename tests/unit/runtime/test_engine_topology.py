"""Topology: stages, neighbours, deduplicated gradient buckets and the tied-weight group of a plan."""

from __future__ import annotations

import pytest

from oobleck.errors import PlanningError
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.runtime.config import OptimConfig
from oobleck.runtime.engine.optim import clip_coefficient, learning_rate
from oobleck.runtime.engine.topology import build_topology


def make_plan(pipelines: list[tuple[list[tuple[int, int]], list[int], int]], gpus: int = 1) -> Plan:
    built = []
    for bounds, nodes, microbatches in pipelines:
        stages = tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=gpus, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(bounds)
        )
        template = PipelineTemplate(num_nodes=len(bounds), gpus_per_node=gpus, stages=stages)
        built.append(Pipeline(template=template, nodes=tuple(nodes), microbatches=microbatches))
    total = sum(p.microbatches for p in built)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=total,
        microbatch_size=1,
        fault_tolerance=1,
        iteration_time_s=1.0,
    )


def test_heterogeneous_plan_buckets_and_neighbours() -> None:
    """A 1-stage and a 3-stage pipeline give one bucket per holder set and a tied union group."""
    plan = make_plan([([(0, 4)], [7], 3), ([(0, 1), (1, 3), (3, 4)], [2, 5, 9], 5)])
    ranks = {7: 0, 2: 1, 5: 2, 9: 3}
    topology = build_topology(plan, ranks, num_layers=4, tied_pairs=((0, 3),))
    middle = topology.stage_of_rank(2)
    assert (middle.pipeline, middle.stage, middle.layers) == (1, 1, (1, 2))
    assert (middle.prev_rank, middle.next_rank, middle.first_microbatch, middle.microbatches) == (1, 3, 3, 5)
    assert topology.stage_of_rank(0).norm_layers == (0, 1, 2, 3)
    assert topology.stage_of_rank(3).norm_layers == ()
    by_ranks = {bucket.ranks: (bucket.layers, bucket.tied) for bucket in topology.buckets}
    assert by_ranks == {(0, 1): ((0,), ()), (0, 2): ((1, 2), ()), (0, 3): ((3,), ()), (0, 1, 3): ((), (0,))}
    assert topology.group_rank_sets() == ((0, 1), (0, 2), (0, 3), (0, 1, 3))


def test_tied_group_merges_with_an_equal_layer_bucket() -> None:
    """When the tied holders equal a layer's holders, the tied weight rides in that layer's bucket."""
    plan = make_plan([([(0, 4)], [0], 1), ([(0, 4)], [1], 1)])
    topology = build_topology(plan, {0: 0, 1: 1}, num_layers=4, tied_pairs=((0, 3),))
    assert [(b.ranks, b.layers, b.tied) for b in topology.buckets] == [((0, 1), (0, 1, 2, 3), (0,))]


def test_bad_plans_are_rejected() -> None:
    """Missing ranks and a wrong layer count are PlanningErrors naming the problem (TP: see its own tests)."""
    with pytest.raises(PlanningError, match="have no rank"):
        build_topology(make_plan([([(0, 4)], [5], 1)]), {0: 0}, num_layers=4)
    with pytest.raises(PlanningError, match="covers 4 layers but the model has 6"):
        build_topology(make_plan([([(0, 4)], [0], 1)]), {0: 0}, num_layers=6)


def test_learning_rate_schedule_and_clipping() -> None:
    """Warmup rises linearly to lr, cosine ends at min_lr; clipping only ever scales down."""
    config = OptimConfig(lr=1.0, warmup_steps=3, min_lr=0.1)
    assert [learning_rate(s, 10, config) for s in range(3)] == [0.25, 0.5, 0.75]
    assert learning_rate(3, 10, config) == 1.0
    assert learning_rate(9, 10, config) == pytest.approx(0.1)
    assert clip_coefficient(0.5, 1.0) == 1.0
    assert clip_coefficient(4.0, 1.0) == pytest.approx(0.25, rel=1e-5)
    assert clip_coefficient(4.0, 0.0) == 1.0
