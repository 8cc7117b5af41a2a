"""Parameters per layer of the runtime's three decoder layouts, from HF config fields alone.

The runtime builds a model as embedding, blocks, head (``oobleck.runtime.engine.adapters``) and
prices it from each layer's parameter count. The master must check that a job's plan fits before
any worker imports torch, so the counts are computed here by arithmetic on the config fields; a
unit test builds every adapter preset with torch and asserts the counts are equal.

Assumptions:
    * ``fields`` are the resolved HF config values under the config class's canonical names
      (GPT-2's ``n_embd``, not its alias ``hidden_size``), derived defaults already filled in
      (LLaMA ``head_dim``/``num_key_value_heads``, OPT ``word_embed_proj_dim``).
    * A tied head counts its own copy of the embedding matrix, as the profile does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oobleck.errors import ConfigError

ARCHS: tuple[str, ...] = ("gpt2", "llama", "opt")


def _linear(inputs: int, outputs: int, bias: bool) -> int:
    return inputs * outputs + (outputs if bias else 0)


def _gpt2(fields: Mapping[str, Any]) -> tuple[int, int, int, int]:
    hidden, vocab = int(fields["n_embd"]), int(fields["vocab_size"])
    inner = int(fields["n_inner"]) if fields.get("n_inner") is not None else 4 * hidden
    embedding = vocab * hidden + int(fields["n_positions"]) * hidden
    attention = _linear(hidden, 3 * hidden, True) + _linear(hidden, hidden, True)
    block = 2 * hidden + attention + 2 * hidden + _linear(hidden, inner, True) + _linear(inner, hidden, True)
    if fields.get("add_cross_attention"):
        # q_attn + c_attn (keys, values) + c_proj, and ln_cross_attn.
        block += _linear(hidden, hidden, True) + _linear(hidden, 2 * hidden, True)
        block += _linear(hidden, hidden, True) + 2 * hidden
    head = 2 * hidden + hidden * vocab
    return int(fields["n_layer"]), embedding, block, head


def _llama(fields: Mapping[str, Any]) -> tuple[int, int, int, int]:
    hidden, vocab = int(fields["hidden_size"]), int(fields["vocab_size"])
    heads, kv_heads = int(fields["num_attention_heads"]), int(fields["num_key_value_heads"])
    head_dim, inner = int(fields["head_dim"]), int(fields["intermediate_size"])
    attn_bias, mlp_bias = bool(fields.get("attention_bias")), bool(fields.get("mlp_bias"))
    attention = (
        _linear(hidden, heads * head_dim, attn_bias)
        + 2 * _linear(hidden, kv_heads * head_dim, attn_bias)
        + _linear(heads * head_dim, hidden, attn_bias)
    )
    mlp = 2 * _linear(hidden, inner, mlp_bias) + _linear(inner, hidden, mlp_bias)
    block = 2 * hidden + attention + mlp  # two RMSNorm weights
    head = hidden + hidden * vocab
    return int(fields["num_hidden_layers"]), vocab * hidden, block, head


def _opt(fields: Mapping[str, Any]) -> tuple[int, int, int, int]:
    hidden, vocab = int(fields["hidden_size"]), int(fields["vocab_size"])
    proj, inner = int(fields["word_embed_proj_dim"]), int(fields["ffn_dim"])
    bias = bool(fields.get("enable_bias", True))
    norm = 2 * hidden if fields.get("layer_norm_elementwise_affine", True) else 0
    # NOTE: OPT's learned positions carry 2 extra rows (see adapters._OPTEmbedding).
    embedding = vocab * proj + (int(fields["max_position_embeddings"]) + 2) * hidden
    projection = proj * hidden if proj != hidden else 0
    block = 4 * _linear(hidden, hidden, bias) + _linear(hidden, inner, bias) + _linear(inner, hidden, bias)
    block += 2 * norm
    head = norm + projection + proj * vocab
    return int(fields["num_hidden_layers"]), embedding + projection, block, head


_COUNTERS = {"gpt2": _gpt2, "llama": _llama, "opt": _opt}


def layer_parameter_counts(arch: str, fields: Mapping[str, Any]) -> tuple[int, ...]:
    """Parameters of every layer (embedding, each block, head) of the runtime's model.

    Args:
        arch: ``gpt2``, ``llama`` or ``opt``.
        fields: Resolved HF config values under canonical names (see the module's assumptions).

    Returns:
        ``blocks + 2`` counts, in layer order.

    Raises:
        ConfigError: An unknown arch, or a size field that is missing or not a positive integer.
    """
    if arch not in _COUNTERS:
        raise ConfigError(f"model.arch: {arch!r} is not one of {', '.join(ARCHS)}")
    try:
        blocks, embedding, block, head = _COUNTERS[arch](fields)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"model: {arch} size field {error} is missing or not an integer") from None
    if blocks < 1 or min(embedding, block, head) < 1:
        raise ConfigError(f"model: {arch} sizes give an empty layer (blocks={blocks}); use positive sizes")
    return (embedding, *([block] * blocks), head)
