"""One-stage 1F1B steps under autocast and activation checkpointing: real layers, fp32 gradients."""

from __future__ import annotations

import pytest
import torch

from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.executor import run_1f1b
from tests.unit.runtime.one_stage import MICROBATCHES, one_stage_context


def _step(precision: str, checkpoint_layers: bool) -> tuple[float, list[torch.Tensor]]:
    """Loss sum and parameter gradients of one step of the whole tiny GPT-2 as one stage."""
    ctx = one_stage_context(Comm("gloo"), precision=precision, checkpoint_layers=checkpoint_layers)
    layers = ctx.layers
    loss = run_1f1b(ctx, MICROBATCHES, loss_scale=0.5)
    grads = [p.grad for layer in layers for _, p in sorted(layer.named_parameters()) if p.grad is not None]
    return float(loss), grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointing_recomputes_the_same_gradients(precision: str) -> None:
    """Recomputing activations in backward gives the loss and gradients of keeping them, bit for bit."""
    loss, grads = _step(precision, checkpoint_layers=False)
    again, recomputed = _step(precision, checkpoint_layers=True)
    assert loss == again and len(grads) == len(recomputed) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, recomputed, strict=True))


def test_bf16_autocast_changes_the_math_but_keeps_fp32_gradients() -> None:
    """bf16 autocast computes a slightly different loss, and every parameter gradient is still fp32."""
    loss32, _ = _step("fp32", checkpoint_layers=False)
    loss16, grads = _step("bf16", checkpoint_layers=False)
    assert loss16 != loss32 and abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    assert {g.dtype for g in grads} == {torch.float32}
