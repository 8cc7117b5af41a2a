"""Tests of the process-group schedule: rounds of disjoint groups and a plan's group shape."""

from __future__ import annotations

import itertools
import random

from oobleck.planning.groups import GroupShape, creation_rounds, plan_group_shape, sequential_depth
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage


def _template(bounds: list[int]) -> PipelineTemplate:
    """One stage per node, stage ``i`` holding layers ``bounds[i] .. bounds[i + 1] - 1``."""
    stages = tuple(
        Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    )
    return PipelineTemplate(num_nodes=len(stages), gpus_per_node=1, stages=stages)


def _plan(templates: list[PipelineTemplate]) -> Plan:
    pipelines, next_node = [], 0
    for template in templates:
        nodes = tuple(range(next_node, next_node + template.num_nodes))
        next_node += template.num_nodes
        pipelines.append(Pipeline(template=template, nodes=nodes, microbatches=template.num_nodes))
    return Plan(
        pipelines=tuple(pipelines),
        global_microbatches=sum(p.microbatches for p in pipelines),
        microbatch_size=1,
        fault_tolerance=len(pipelines) - 1,
        iteration_time_s=1.0,
    )


def _rank_sets(plan: Plan, tied: tuple[tuple[int, int], ...] = ()) -> list[tuple[int, ...]]:
    """The runtime's group sets in node space (one rank per node), written out the slow way."""
    layers = plan.pipelines[0].template.num_layers
    sets: list[tuple[int, ...]] = []
    for layer in range(layers):
        holders = tuple(sorted(plan.holders(layer)))
        if holders not in sets:
            sets.append(holders)
    for source, other in tied:
        union = tuple(sorted({*plan.holders(source), *plan.holders(other)}))
        if union not in sets:
            sets.append(union)
    return [s for s in sets if len(s) > 1]


def test_chain_of_overlapping_groups_takes_two_rounds() -> None:
    """A chain (0,1),(1,2),(2,3),(3,4), sequential in four steps, is created in two rounds."""
    chain = [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert sequential_depth(chain) == 4
    assert creation_rounds(chain) == ((0, 2), (1, 3))


def test_rounds_are_disjoint_and_schedule_each_distinct_set_once() -> None:
    """Every distinct set lands in exactly one round, duplicates are dropped, a round never shares a rank."""
    sets = [(0, 1, 2), (2, 3), (1, 2), (0, 1, 2), (4, 5), (3, 4)]
    rounds = creation_rounds(sets)
    scheduled = sorted(i for r in rounds for i in r)
    assert scheduled == [0, 1, 2, 4, 5]
    for round_ in rounds:
        members = [rank for i in round_ for rank in sets[i]]
        assert len(members) == len(set(members))


def test_random_heterogeneous_plans_need_as_many_rounds_as_the_busiest_rank_has_groups() -> None:
    """Per-layer groups of random plans take exactly max-groups-per-rank rounds (the lower bound)."""
    rng = random.Random(7)
    for _ in range(60):
        layers = rng.randint(2, 24)
        templates = []
        for _ in range(rng.randint(2, 5)):
            cuts = sorted(rng.sample(range(1, layers), rng.randint(0, min(5, layers - 1))))
            templates.append(_template([0, *cuts, layers]))
        plan = _plan(templates)
        sets = _rank_sets(plan)
        busiest = max((sum(node in s for s in sets) for node in plan.nodes), default=0)
        assert len(creation_rounds(sets)) == busiest
        shape = plan_group_shape(plan)
        assert shape == GroupShape(
            groups=len(sets), rounds=busiest, largest_members=max(map(len, sets), default=0)
        )


def test_group_shape_counts_tied_weight_groups_like_the_runtime() -> None:
    """A tied first/last layer on different stages adds the union group, and a round if it must."""
    rng = random.Random(3)
    for _ in range(40):
        layers = rng.randint(3, 16)
        templates = []
        for _ in range(rng.randint(1, 4)):
            cuts = sorted(rng.sample(range(1, layers), rng.randint(0, min(4, layers - 1))))
            templates.append(_template([0, *cuts, layers]))
        plan = _plan(templates)
        tied = ((0, layers - 1),)
        sets = _rank_sets(plan, tied)
        shape = plan_group_shape(plan, tied)
        assert shape.groups == len(sets)
        assert shape.rounds == len(creation_rounds(sets))
        assert shape.largest_members == max(map(len, sets), default=0)


def test_one_pipeline_without_ties_needs_no_group() -> None:
    """A single pipeline has one holder per layer: no data-parallel group, no round."""
    assert plan_group_shape(_plan([_template([0, 2, 4])])) == GroupShape(
        groups=0, rounds=0, largest_members=0
    )
