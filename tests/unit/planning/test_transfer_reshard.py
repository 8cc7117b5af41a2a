"""Tests for the (layer, TP shard) routes of oobleck.planning.transfer: who sends which piece to whom."""

from __future__ import annotations

import pytest

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage, Transfer
from oobleck.planning.transfer import ShardRoute, StageSlot, reshard_routes, shard_routes


def route(src: int, dst: int, pieces: int, piece: int, replicated: bool) -> ShardRoute:
    return ShardRoute(
        layer=1,
        src_rank=src,
        dst_rank=dst,
        src_node=0,
        dst_node=1,
        pieces=pieces,
        piece=piece,
        replicated=replicated,
    )


def test_equal_degrees_go_peer_to_peer() -> None:
    """TP 2 -> TP 2: shard t goes from source rank t to destination rank t only, whole per pair."""
    routes = shard_routes(1, StageSlot(0, (0, 1), 2), StageSlot(1, (4, 5), 2))
    assert routes == (route(0, 4, 2, 0, True), route(1, 5, 2, 1, True))


def test_whole_to_tp2_cuts_each_destination_its_piece() -> None:
    """TP 1 -> TP 2: the one source sends each destination rank only its half."""
    routes = shard_routes(1, StageSlot(0, (0,), 1), StageSlot(1, (4, 5), 2))
    assert routes == (route(0, 4, 2, 0, True), route(0, 5, 2, 1, True))


def test_tp2_to_whole_gathers_both_shards_and_replicated_once() -> None:
    """TP 2 -> TP 1: the destination receives shard 0 (with the replicated tensors) and shard 1."""
    routes = shard_routes(1, StageSlot(0, (0, 1), 2), StageSlot(1, (4,), 1))
    assert routes == (route(0, 4, 2, 0, True), route(1, 4, 2, 1, False))


def test_whole_layer_on_several_ranks_is_read_from_itself_or_spread() -> None:
    """A replicated layer on a 2-rank stage is read by a member from itself, by others round-robin."""
    assert shard_routes(1, StageSlot(0, (0, 1), 1), StageSlot(1, (1,), 1))[0].src_rank == 1
    spread = shard_routes(1, StageSlot(0, (0, 1), 1), StageSlot(1, (4, 5), 1))
    assert [(r.src_rank, r.dst_rank, r.pieces) for r in spread] == [(0, 4, 1), (1, 5, 1)]


def test_degrees_that_do_not_divide_are_refused() -> None:
    """TP 2 -> TP 3 cannot be cut into common pieces: a ReconfigurationError naming both degrees."""
    with pytest.raises(ReconfigurationError, match="from TP degree 2 to 3"):
        shard_routes(1, StageSlot(0, (0, 1), 2), StageSlot(1, (4, 5, 6), 3))


def plan_of(pipelines: list[tuple[tuple[int, ...], list[tuple[int, int, int, int]]]]) -> Plan:
    """Pipelines of (nodes, [(first layer, end layer, template node, gpus)]) on 2-device nodes."""
    built = []
    for nodes, stages in pipelines:
        template = PipelineTemplate(
            num_nodes=len(nodes),
            gpus_per_node=2,
            stages=tuple(
                Stage(first_layer=a, end_layer=b, node=n, gpus=g, latency_s=1.0, memory_bytes=0)
                for a, b, n, g in stages
            ),
        )
        built.append(Pipeline(template=template, nodes=nodes, microbatches=2))
    return Plan(
        pipelines=tuple(built),
        global_microbatches=2 * len(built),
        microbatch_size=1,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def block(layer: int) -> bool:
    return 0 < layer < 4


def test_a_node_keeping_its_layers_on_other_devices_reshards_in_place() -> None:
    """A TP-2 whole-model node split into two 1-device stages: blocks are gathered, nothing else moves."""
    old = plan_of([((0,), [(0, 5, 0, 2)])])
    new = plan_of([((0,), [(0, 2, 0, 1), (2, 5, 0, 1)])])
    routes = reshard_routes((), old, new, {0: 0}.__getitem__, block)
    got = [(r.layer, r.src_rank, r.dst_rank, r.piece) for r in routes]
    # layer 0 and 4 (replicated) stay where they are; block 1 -> rank 0, blocks 2, 3 -> rank 1
    assert got == [(1, 0, 0, 0), (1, 1, 0, 1), (2, 0, 1, 0), (2, 1, 1, 1), (3, 0, 1, 0), (3, 1, 1, 1)]


def test_planner_copies_become_rank_routes_and_kept_layers_stay() -> None:
    """A copy between TP-2 stages of two nodes is two peer routes; a node's unchanged stage adds none."""
    old = plan_of([((0,), [(0, 5, 0, 2)]), ((1, 2), [(0, 2, 0, 2), (2, 5, 1, 2)])])
    new = plan_of([((0,), [(0, 5, 0, 2)]), ((1,), [(0, 5, 0, 2)])])
    transfers = [Transfer(layer=layer, src_node=0, dst_node=1, bytes=0) for layer in (2, 3, 4)]
    routes = reshard_routes(transfers, old, new, {0: 0, 1: 2}.__getitem__, block)
    got = [(r.layer, r.src_rank, r.dst_rank, r.pieces) for r in routes]
    assert got == [(2, 0, 2, 2), (2, 1, 3, 2), (3, 0, 2, 2), (3, 1, 3, 2), (4, 0, 2, 1), (4, 1, 3, 1)]
