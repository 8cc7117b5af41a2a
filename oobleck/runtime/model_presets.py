"""Model presets and per-architecture defaults: the HF config fields a named model is built from.

Torch-free, so that the master (preflight, ``oobleck plan --config``) and the engine's adapters
resolve a job's model from one table.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-gpt2": {
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 128,
        "tie_word_embeddings": False,
    },
    "tiny-gpt2-tied": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128},
    "tiny-llama": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    },
    "tiny-opt": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "ffn_dim": 128,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "word_embed_proj_dim": 64,
    },
}
"""Named tiny models (HF config fields) for tests, the demo and the docs."""

ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # NOTE: dropout is off by default: with it, a split model cannot reproduce one-process training.
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True},
    "llama": {"tie_word_embeddings": False},
    "opt": {"dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": True},
}
"""Fields every model of an architecture gets unless the job states them."""
