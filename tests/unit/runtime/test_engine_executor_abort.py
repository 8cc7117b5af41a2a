"""A failure latched while a stage computes ends its step at the next layer, not at its next collective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oobleck.runtime.engine.comm import Comm, CommunicationError
from oobleck.runtime.engine.executor import StageContext, run_1f1b
from tests.unit.runtime.one_stage import MICROBATCHES, one_stage_context


class _Spy(nn.Module):
    """Runs a layer, counting forwards; optionally latches an abort (as the link thread would)."""

    def __init__(self, layer: nn.Module, comm: Comm, abort_in: str | None = None) -> None:
        super().__init__()
        self.layer, self.comm, self.abort_in, self.forwards = layer, comm, abort_in, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        out: torch.Tensor = self.layer(hidden)
        if self.abort_in == "forward":
            self.comm.abort("failure notice")
        elif self.abort_in == "backward" and self.forwards == 1:
            out.register_hook(lambda grad: self.comm.abort("failure notice"))
        return out


def _one_stage(abort_at: int, abort_in: str) -> tuple[list[_Spy], StageContext]:
    """The whole tiny GPT-2 as one data-parallel stage, layer ``abort_at`` latching an abort."""
    comm = Comm("gloo")
    ctx = one_stage_context(comm, lambda i, layer: _Spy(layer, comm, abort_in if i == abort_at else None))
    return [layer for layer in ctx.layers if isinstance(layer, _Spy)], ctx


def test_an_abort_during_a_forward_stops_the_step_before_the_next_layer() -> None:
    """An abort latched inside layer 1's forward raises before layer 2 runs; no backward runs."""
    layers, ctx = _one_stage(abort_at=1, abort_in="forward")
    with pytest.raises(CommunicationError, match="failure notice"):
        run_1f1b(ctx, MICROBATCHES, loss_scale=0.5)
    assert [spy.forwards for spy in layers] == [1, 1] + [0] * (len(layers) - 2)
    assert all(p.grad is None for p in ctx.layers[0].parameters())


def test_an_abort_during_a_backward_stops_it_before_the_next_layer() -> None:
    """An abort latched as microbatch 0's backward reaches layer 1 raises before layers 1 and 0 get
    gradients, and before microbatch 1's forward starts."""
    layers, ctx = _one_stage(abort_at=1, abort_in="backward")
    with pytest.raises(CommunicationError, match="failure notice"):
        run_1f1b(ctx, MICROBATCHES, loss_scale=0.5)
    assert [spy.forwards for spy in layers] == [1] * len(layers)
    assert all(p.grad is None for spy in layers[:2] for p in spy.parameters())
    assert any(p.grad is not None for p in layers[-1].parameters())


def test_raise_if_failed_is_silent_until_an_error_is_latched() -> None:
    """The between-layers check passes on a healthy world and raises the latched error after an abort."""
    comm = Comm("gloo")
    comm.raise_if_failed()
    comm.abort("failure notice")
    with pytest.raises(CommunicationError, match="failure notice"):
        comm.raise_if_failed()
