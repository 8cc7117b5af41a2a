"""The whole tiny GPT-2 as one 1F1B stage on the CPU: the executor unit tests' shared fixture."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.data import TokenDataset
from oobleck.runtime.engine.executor import StageContext
from oobleck.runtime.engine.topology import StageInfo

MICROBATCHES = [[0, 1], [2, 3]]
"""Two microbatches of two samples (of 8 tokens each)."""


def one_stage_context(
    comm: Comm, wrap: Callable[[int, nn.Module], nn.Module] = lambda _, layer: layer, **options: object
) -> StageContext:
    """Tiny GPT-2 (seed 3) as the only stage of a one-pipeline plan, over deterministic tokens.

    Args:
        comm: The stage's communicator (its latch is what the abort tests exercise).
        wrap: ``(layer index, layer) -> module`` run by the stage (a spy, or the layer itself).
        options: More :class:`StageContext` fields (``precision``, ``checkpoint_layers``).
    """
    adapter = build_adapter(ModelConfig(name="tiny-gpt2", arch="gpt2"))
    layers: Sequence[nn.Module] = [wrap(i, adapter.build_layer(i, seed=3)) for i in range(adapter.num_layers)]
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
    return StageContext(
        info=info,
        layers=list(layers),
        comm=comm,
        dataset=TokenDataset(tokens, sequence_length=8),
        device=torch.device("cpu"),
        activation_shape=(2, 8, adapter.hidden_size),
        **options,  # type: ignore[arg-type]
    )
