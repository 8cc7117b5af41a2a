"""Scenario: train your own (non-HF) torch model with oobleck: elastic under the agent, or under torchrun.

Covers: ``oobleck.api.LayeredModel`` (one zero-argument factory per layer, the user's own init and
loss), ``oobleck.api.main`` (the worker's command line), and manual pipeline templates (in
``job.yaml``'s ``pipelines:``; ``api.main(model, pipelines=[...])`` takes the same list).

Run it elastic (4 local agents; a killed node is recovered from the other replicas)::

    python -m oobleck.runtime.master --hostfile examples/hosts.local4 \\
        --config examples/custom_model/job.yaml --run-dir runs/custom

or standalone under torchrun (no fault tolerance). There a node is the ``--nproc-per-node``
processes of one machine, so keep only templates that fit that world: with ``--nproc-per-node 2``
the 2-stage template alone (delete the 3-stage line of ``job.yaml``), or no ``pipelines`` at all::

    torchrun --standalone --nproc-per-node 2 examples/custom_model/train.py \\
        --config JOB_WITH_FITTING_TEMPLATES.yaml --run-dir runs/custom-torchrun

The model: token + position embedding, causal self-attention blocks (pre-norm, SDPA) and a
norm + linear head over byte tokens. No dropout, so a recovered run matches a fault-free one bit
for bit (the job turns exact accumulation on).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from oobleck import api

HIDDEN_SIZE = 32
"""Width of the activations between layers (what crosses a stage boundary)."""
HEADS = 4
"""Attention heads per block."""
BLOCKS = 4
"""Transformer blocks between the embedding (layer 0) and the head (layer 5)."""
VOCAB_SIZE = 258
"""Byte tokens 0-255 plus BOS/EOS, as the built-in ``pydoc`` data source yields."""
MAX_POSITIONS = 256
"""Longest sequence the position table covers (the job uses 32 tokens)."""


class Embedding(nn.Module):
    """Layer 0: int64 token ids ``[b, t]`` -> ``[b, t, HIDDEN_SIZE]``."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, HIDDEN_SIZE)
        self.positions = nn.Embedding(MAX_POSITIONS, HIDDEN_SIZE)
        nn.init.normal_(self.tokens.weight, std=0.02)  # NOTE: the user's own init is kept, seeded per layer.
        nn.init.normal_(self.positions.weight, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))


class Block(nn.Module):
    """An inner layer: pre-norm causal self-attention and MLP, ``[b, t, h] -> [b, t, h]``."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN_SIZE), nn.LayerNorm(HIDDEN_SIZE)
        self.qkv = nn.Linear(HIDDEN_SIZE, 3 * HIDDEN_SIZE)
        self.proj = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)
        self.mlp = nn.Sequential(
            nn.Linear(HIDDEN_SIZE, 4 * HIDDEN_SIZE), nn.GELU(), nn.Linear(4 * HIDDEN_SIZE, HIDDEN_SIZE)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, t, h = hidden.shape
        q, k, v = self.qkv(self.norm1(hidden)).view(b, t, 3, HEADS, h // HEADS).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        hidden = hidden + self.proj(attended.transpose(1, 2).reshape(b, t, h))
        return hidden + self.mlp(self.norm2(hidden))


class Head(nn.Module):
    """The last layer: ``[b, t, h]`` -> logits ``[b, t, VOCAB_SIZE]``."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN_SIZE)
        self.out = nn.Linear(HIDDEN_SIZE, VOCAB_SIZE, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(hidden))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of one microbatch (a scalar mean, as the layer contract asks)."""
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


MODEL = api.LayeredModel(
    name="byte-transformer",
    layers=[Embedding, *[Block] * BLOCKS, Head],
    hidden_size=HIDDEN_SIZE,
    vocab_size=VOCAB_SIZE,
    loss=next_token_loss,
)

if __name__ == "__main__":
    raise SystemExit(api.main(MODEL))
