"""One-stage 1F1B steps under autocast and activation checkpointing: real layers, fp32 gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.data import TokenDataset
from oobleck.runtime.engine.executor import StageContext, run_1f1b
from oobleck.runtime.engine.topology import StageInfo

CPU = torch.device("cpu")
MICROBATCHES = [[0, 1], [2, 3]]


def _step(precision: str, checkpoint_layers: bool) -> tuple[float, list[torch.Tensor]]:
    """Loss sum and parameter gradients of one step of the whole tiny GPT-2 as one stage."""
    adapter = build_adapter(ModelConfig(name="tiny-gpt2", arch="gpt2"))
    layers = [adapter.build_layer(i, seed=3) for i in range(adapter.num_layers)]
    tokens = np.random.default_rng(0).integers(0, adapter.vocab_size, size=4 * 8 + 1)
    info = StageInfo(
        rank=0,
        pipeline=0,
        stage=0,
        num_stages=1,
        layers=tuple(range(adapter.num_layers)),
        microbatches=len(MICROBATCHES),
        first_microbatch=0,
        prev_rank=None,
        next_rank=None,
        norm_layers=(),
    )
    ctx = StageContext(
        info=info,
        layers=layers,
        comm=Comm("gloo"),
        dataset=TokenDataset(tokens, sequence_length=8),
        device=CPU,
        activation_shape=(2, 8, adapter.hidden_size),
        precision=precision,
        checkpoint_layers=checkpoint_layers,
    )
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
