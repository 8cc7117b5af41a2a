"""Resharding a layer's state between TP degrees (no comm): pieces cut by sources rebuild each shard."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from oobleck.planning.transfer import StageSlot, shard_routes
from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.optim import LayerState
from oobleck.runtime.engine.tensor_parallel import ShardSpec, local_shard, shard_specs
from oobleck.runtime.engine.transfer import HeldShard, assemble, named_state, piece_shapes, route_piece


def full_state(arch: str, name: str) -> LayerState:
    """Block 1 of a tiny model with random (not zero) moments and a step count, one-process layout."""
    adapter = build_adapter(ModelConfig(name=name, arch=arch))
    state = LayerState(index=1, module=adapter.build_layer(1, 7))
    state.ensure_moments()
    generator = torch.Generator().manual_seed(5)
    for moments in (state.exp_avg, state.exp_avg_sq):
        for key, tensor in moments.items():
            moments[key] = torch.rand(tensor.shape, generator=generator)
    state.step = 4
    return state


def shard_of(full: LayerState, arch: str, degree: int, index: int) -> HeldShard:
    """``full`` as TP rank ``index`` of ``degree`` holds it: each tensor its local shard (plain tensors)."""
    if degree == 1:
        return HeldShard(full, 1, 0)
    module = copy.deepcopy(full.module)
    specs = shard_specs(arch, [name for name, _ in full.params()], degree)
    for name, param in full.params():
        path, _, kind = name.rpartition(".")
        local = local_shard(param.detach(), specs[name], index)
        module.get_submodule(path).register_parameter(kind, nn.Parameter(local))
    state = LayerState(index=1, module=module)
    state.exp_avg = {k: local_shard(v, specs[k], index) for k, v in full.exp_avg.items()}
    state.exp_avg_sq = {k: local_shard(v, specs[k], index) for k, v in full.exp_avg_sq.items()}
    state.step = full.step
    return HeldShard(state, degree, index)


def empty_like(held: HeldShard) -> HeldShard:
    """A receiving target laid out like ``held``, every tensor zero."""
    state = copy.deepcopy(held.state)
    with torch.no_grad():
        for _, tensor in named_state(state):
            tensor.zero_()
    return HeldShard(state, held.degree, held.index)


@pytest.mark.parametrize(("arch", "name"), [("gpt2", "tiny-gpt2"), ("llama", "tiny-llama")])
@pytest.mark.parametrize(("src_degree", "dst_degree"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_every_destination_shard_equals_the_cut_of_the_full_state(
    arch: str, name: str, src_degree: int, dst_degree: int
) -> None:
    """Parameters and both moments of every destination shard equal the one-process cut, bit for bit."""
    full = full_state(arch, name)
    names = [n for n, _ in full.params()]

    def specs(layer: int, degree: int) -> dict[str, ShardSpec]:
        return shard_specs(arch, names, degree)

    sources = {r: shard_of(full, arch, src_degree, r) for r in range(src_degree)}
    dst_ranks = tuple(range(10, 10 + dst_degree))
    routes = shard_routes(1, StageSlot(0, tuple(sources), src_degree), StageSlot(1, dst_ranks, dst_degree))
    for j, dst in enumerate(dst_ranks):
        expected = shard_of(full, arch, dst_degree, j)
        target = empty_like(expected)
        got = {}
        for piece_route in (r for r in routes if r.dst_rank == dst):
            piece = route_piece(sources[piece_route.src_rank], piece_route, specs)
            shapes = piece_shapes(target, piece_route, specs)
            assert [t.shape for t in piece] == shapes  # the receiver sizes its buffer alike
            got[piece_route.piece] = piece
        assemble(target, got, specs, max(r.pieces for r in routes))
        for (key, value), (_, want) in zip(
            named_state(target.state), named_state(expected.state), strict=True
        ):
            assert torch.equal(value, want), (key, src_degree, dst_degree, j)
