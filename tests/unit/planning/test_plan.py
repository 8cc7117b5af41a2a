"""Tests for oobleck.planning.plan: the per-template layout tables and the caches on frozen plans."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from oobleck.planning.members import MemberChange
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage, Transfer


def template() -> PipelineTemplate:
    """Two nodes: node 0 runs stages [0, 3) and [3, 5) on one device each, node 1 runs [5, 8)."""
    spans = ((0, 3, 0), (3, 5, 0), (5, 8, 1))
    stages = tuple(
        Stage(first_layer=a, end_layer=b, node=n, gpus=1, latency_s=0.1 * (b - a), memory_bytes=0)
        for a, b, n in spans
    )
    return PipelineTemplate(num_nodes=2, gpus_per_node=2, stages=stages)


def scan_stage_of_layer(shape: PipelineTemplate, layer: int) -> int:
    """The linear scan the layout table replaces."""
    return next(i for i, s in enumerate(shape.stages) if s.first_layer <= layer < s.end_layer)


def test_layout_tables_match_a_scan_of_the_stages() -> None:
    """Per-layer stage and node tables, node ranges and latency sums agree with the stage list."""
    shape = template()
    layout = shape.layout
    assert [shape.stage_of_layer(layer) for layer in range(8)] == [
        scan_stage_of_layer(shape, layer) for layer in range(8)
    ]
    assert layout.node_of_layer == (0, 0, 0, 0, 0, 1, 1, 1)
    assert layout.node_ranges == ((0, 5), (5, 8))
    assert shape.sum_latency_s == sum(stage.latency_s for stage in shape.stages)
    assert shape.max_latency_s == max(stage.latency_s for stage in shape.stages)


@pytest.mark.parametrize("layer", [-1, 8])
def test_stage_of_layer_outside_the_model_raises(layer: int) -> None:
    """A layer no stage holds raises IndexError, as the scan did."""
    with pytest.raises(IndexError, match="outside"):
        template().stage_of_layer(layer)


def test_layout_cache_is_invisible_to_equality_hash_repr_json_and_pickle() -> None:
    """A template with its cache filled is equal, hash-equal and JSON-equal to a fresh one."""
    warm, cold = template(), template()
    _ = warm.layout
    assert warm == cold
    assert hash(warm) == hash(cold)
    assert repr(warm) == repr(cold)
    assert "_layout" not in repr(warm)
    assert warm.to_dict() == cold.to_dict()
    assert pickle.loads(pickle.dumps(warm)) == cold
    with pytest.raises(dataclasses.FrozenInstanceError):
        warm.num_nodes = 3  # type: ignore[misc]  # NOTE: asserting the template stays frozen


def test_plan_nodes_are_sorted_and_cached_without_changing_equality() -> None:
    """Plan.nodes lists every member sorted, returns the same tuple again, and leaves equality alone."""
    shape = template()

    def make() -> Plan:
        pipelines = (
            Pipeline(template=shape, nodes=(7, 2), microbatches=3),
            Pipeline(template=shape, nodes=(5, 0), microbatches=3),
        )
        return Plan(
            pipelines=pipelines,
            global_microbatches=6,
            microbatch_size=1,
            fault_tolerance=1,
            iteration_time_s=1.0,
        )

    warm, cold = make(), make()
    assert warm.nodes == (0, 2, 5, 7)
    assert warm.nodes is warm.nodes
    assert warm == cold
    assert warm.to_dict() == cold.to_dict()
    assert warm.holders(4) == (7, 5)
    assert warm.holders(6) == (2, 0)


def test_member_changes_resolve_along_an_unread_chain_and_pickle_resolved() -> None:
    """Members derived change by change equal the sorted result, read once; a pickle carries the tuple."""
    root = (1, 3, 5, 7, 9)
    first = MemberChange(base=root, lost=(3, 9), joined=(4, 10))
    second = MemberChange(base=first, lost=(1,), joined=(2,))
    third = MemberChange(base=second, lost=(10,), joined=())
    assert third.resolve() == (2, 4, 5, 7)
    assert (first.members, second.members) == ((1, 4, 5, 7, 10), (2, 4, 5, 7, 10))
    assert second.base == ()
    shape = template()
    plan = Plan.trusted(
        pipelines=(Pipeline(template=shape, nodes=(7, 2), microbatches=3),),
        global_microbatches=3,
        microbatch_size=1,
        fault_tolerance=0,
        iteration_time_s=1.0,
        spare_nodes=(),
        nodes=MemberChange(base=(2, 5, 7), lost=(5,), joined=()),
    )
    copy = pickle.loads(pickle.dumps(plan))
    assert copy._nodes == (2, 7)
    assert plan.nodes == (2, 7)
    assert plan.member_change((2,), (8,)).resolve() == (7, 8)


def test_trusted_constructors_equal_the_checked_ones() -> None:
    """Pipeline.trusted and Transfer.trusted build objects equal (and hashing equal) to the dataclass init."""
    shape = template()
    checked = Pipeline(template=shape, nodes=(7, 2), microbatches=3)
    fast = Pipeline.trusted(shape, (7, 2), 3)
    assert fast == checked
    assert hash(fast) == hash(checked)
    assert fast.to_dict() == checked.to_dict()
    copy = Transfer(layer=4, src_node=1, dst_node=2, bytes=300)
    assert Transfer.trusted(4, 1, 2, 300) == copy
    assert repr(Transfer.trusted(4, 1, 2, 300)) == repr(copy)
