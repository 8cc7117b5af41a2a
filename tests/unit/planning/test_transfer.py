"""Tests for oobleck.planning.transfer: holder lookup and the least-loaded sender choice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.planning.index import PlanIndex
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.planning.transfer import ListHolders, old_holders

LAYERS = 6


def template(num_nodes: int) -> PipelineTemplate:
    """One stage per node over six layers."""
    stages = tuple(
        Stage(
            first_layer=i * LAYERS // num_nodes,
            end_layer=(i + 1) * LAYERS // num_nodes,
            node=i,
            gpus=1,
            latency_s=0.1,
            memory_bytes=0,
        )
        for i in range(num_nodes)
    )
    return PipelineTemplate(num_nodes=num_nodes, gpus_per_node=1, stages=stages)


def plan() -> Plan:
    """Three pipelines of 2, 3 and 2 nodes, two of them sharing one template object."""
    two = template(2)
    groups = ((two, (4, 9)), (template(3), (1, 7, 3)), (two, (8, 0)))
    pipelines = tuple(Pipeline(template=t, nodes=n, microbatches=t.num_stages) for t, n in groups)
    return Plan(
        pipelines=pipelines, global_microbatches=7, microbatch_size=1, fault_tolerance=2, iteration_time_s=1
    )


def test_old_holders_are_plan_holders_minus_the_lost_in_pipeline_order() -> None:
    """Each requested layer lists its surviving holders in pipeline order, as Plan.holders does."""
    old = plan()
    lost = {7, 8}
    holders = old_holders(old, lost, [5, 0, 3, 3])
    assert list(holders) == [0, 3, 5]
    for layer, sources in holders.items():
        assert sources == [node for node in old.holders(layer) if node not in lost]
    assert old_holders(old, lost, []) == {}


@settings(max_examples=200, deadline=None)
@given(
    sources=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=12, unique=True),
    loads=st.dictionaries(st.integers(min_value=0, max_value=30), st.sampled_from([0, 5, 10, 15])),
)
def test_lowest_idle_is_the_lowest_unloaded_source(sources: list[int], loads: dict[int, int]) -> None:
    """The idle sender chosen is the lowest id without load, or None when every source has load."""
    idle = [node for node in sources if not loads.get(node)]
    assert ListHolders({0: sources}).lowest_idle(0, loads) == (min(idle) if idle else None)


@settings(max_examples=50, deadline=None)
@given(
    lost=st.sets(st.sampled_from([0, 1, 3, 4, 7, 8, 9])),
    loads=st.dictionaries(st.sampled_from([0, 1, 3, 4, 7, 8, 9]), st.sampled_from([0, 5])),
)
def test_index_holders_match_the_plan(lost: set[int], loads: dict[int, int]) -> None:
    """The plan index's holder lookups agree with Plan.holders for every layer."""
    old = plan()
    index = PlanIndex(old)
    for layer in range(LAYERS):
        surviving = [node for node in old.holders(layer) if node not in lost]
        idle = [node for node in surviving if not loads.get(node)]
        assert index.lowest_holder(layer, lost, loads) == (min(idle) if idle else None)
        assert sorted(index.surviving_holders(layer, lost)) == sorted(surviving)
        assert list(index.holders_in_order(old, layer, lost)) == surviving
