"""Model adapters: HuggingFace causal LMs as an execution-ordered list of independently built layers.

An adapter turns a :class:`~oobleck.runtime.config.ModelConfig` into ``num_layers`` layer modules
(embedding, each transformer block, final norm + head) whose indices match the planning profile's
layer indices. Only the layers a stage holds are ever built.

Assumptions:
    * ``HF_HUB_OFFLINE=1`` is set before transformers is imported: models come from configs, nothing
      is downloaded.
    * Attention runs through SDPA with no mask, i.e. causal and unpadded: samples are full windows
      of ``sequence_length`` tokens.
    * Every parameter is initialised from a generator seeded by (job seed, layer index, parameter
      name), on the CPU, then copied to the device: every replica of a layer is bit-identical
      whatever rank, device or build order made it. Tied copies (GPT-2 ``lm_head`` = ``wte``) are
      seeded with the key of the weight they are tied to.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from oobleck.errors import ConfigError
from oobleck.runtime.config import ModelConfig
from oobleck.runtime.model_presets import ARCH_DEFAULTS, PRESETS

VOCAB_SIZE = 258
"""Byte-level vocabulary: 256 byte values plus BOS (256) and EOS (257)."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts; stable across processes and Python versions."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True, slots=True)
class TiedWeight:
    """One weight held twice: ``(layer, name)`` on the last stage mirrors ``(source_layer, source_name)``."""

    layer: int
    name: str
    source_layer: int
    source_name: str


@dataclass(slots=True)
class ModelAdapter:
    """Builds the layers of one model; same config in, same layers out, on any rank."""

    name: str
    arch: str
    hf_config: Any
    """The HF ``PretrainedConfig`` the layers are built from."""
    num_layers: int
    hidden_size: int
    vocab_size: int
    init_std: float
    config_dict: dict[str, Any]
    """The full HF config as plain data (its hash keys profiles)."""
    tied: tuple[TiedWeight, ...] = ()
    weights: Any = None
    """``PretrainedWeights`` of ``model.pretrained`` (layers are read from it), or None (seeded init)."""
    _factories: dict[str, Callable[[int], nn.Module]] = field(default_factory=dict)

    def layer_kind(self, index: int) -> str:
        """``embedding``, ``block`` or ``head``, as in the planning profile."""
        if index == 0:
            return "embedding"
        return "head" if index == self.num_layers - 1 else "block"

    def layer_name(self, index: int) -> str:
        """Profile name of a layer: ``embedding``, ``block.<i>`` or ``head``."""
        kind = self.layer_kind(index)
        return f"block.{index - 1}" if kind == "block" else kind

    def tied_names(self, index: int) -> tuple[str, ...]:
        """Names of the parameters of ``index`` that are one side of a tied pair."""
        return tuple(
            name
            for tie in self.tied
            for layer, name in ((tie.layer, tie.name), (tie.source_layer, tie.source_name))
            if layer == index
        )

    def parameter_count(self, index: int) -> int:
        """Parameters of layer ``index`` (built on the meta device: no memory, no init)."""
        with torch.device("meta"):
            module = self._factories[self.layer_kind(index)](index)
        return sum(param.numel() for param in module.parameters())

    def build_layer(self, index: int, seed: int, device: torch.device | str = "cpu") -> nn.Module:
        """Build layer ``index`` with its deterministic initial weights.

        Args:
            index: layer index in ``0 .. num_layers-1``.
            seed: the job seed.
            device: where the module lives.

        Returns:
            The module; embedding takes token ids ``[b, t]``, blocks map ``[b, t, h]`` to the same
            shape, the head returns logits ``[b, t, vocab]``.
        """
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} is outside 0..{self.num_layers - 1}")
        module = self._factories[self.layer_kind(index)](index)
        if self.weights is not None:
            self.weights.load_layer(self, index, module)  # NOTE: pretrained.py; replicas read one file.
            return module.to(device).train()
        sources = {(t.layer, t.name): (t.source_layer, t.source_name) for t in self.tied}
        with torch.no_grad():
            for name, param in sorted(module.named_parameters()):
                key_layer, key_name = sources.get((index, name), (index, name))
                generator = torch.Generator().manual_seed(derive_seed(seed, key_layer, key_name))
                if name.endswith("bias"):
                    value = torch.zeros(param.shape)
                elif param.dim() == 1:
                    value = torch.ones(param.shape)
                else:
                    value = torch.empty(param.shape).normal_(0.0, self.init_std, generator=generator)
                param.copy_(value.to(param.dtype))
        return module.to(device).train()


class _GPT2Embedding(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.wte(input_ids) + self.wpe(positions))


class _Block(nn.Module):
    """A HF decoder block with the keyword arguments its model would pass it."""

    def __init__(self, block: nn.Module, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.block = block
        self.rotary = rotary

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"attention_mask": None}
        if self.rotary is not None:
            positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
            kwargs["position_ids"] = positions
            kwargs["position_embeddings"] = self.rotary(hidden, positions)
        out = self.block(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class _Head(nn.Module):
    def __init__(self, norm: nn.Module | None, vocab_size: int, hidden: int, proj: nn.Module | None) -> None:
        super().__init__()
        self.norm = norm
        self.proj = proj
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            hidden = self.norm(hidden)
        if self.proj is not None:
            hidden = self.proj(hidden)
        return self.lm_head(hidden)


class _OPTEmbedding(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.word_embed_proj_dim)
        # NOTE: OPT's learned positions are offset by 2 (a fairseq legacy); keep the offset so a
        # checkpoint's position table lines up with HF's.
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, config.hidden_size)
        self.project_in = (
            nn.Linear(config.word_embed_proj_dim, config.hidden_size, bias=False)
            if config.word_embed_proj_dim != config.hidden_size
            else None
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        if self.project_in is not None:
            embeds = self.project_in(embeds)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + 2
        return embeds + self.embed_positions(positions)


def build_adapter(model: ModelConfig) -> ModelAdapter:
    """Make the adapter for a job's model (a preset name or HF config fields).

    Args:
        model: the job's model section.

    Returns:
        The adapter; it knows the layer count and builds layers on demand.

    Raises:
        ConfigError: an unknown preset, an HF config field the config class rejects, or a custom
            model (its layers come from the user's script, ``custom_model.py``).
    """
    if model.is_custom:
        raise ConfigError(
            f"model.arch: custom model {model.name!r} exists only in the job's entrypoint script, which "
            "trains it through oobleck.api.main(model); run that script (or let the agent start it): "
            "the built-in worker and `oobleck plan` cannot build it"
        )
    fields_ = dict(ARCH_DEFAULTS[model.arch])
    if model.pretrained is not None:
        from oobleck.runtime.engine.pretrained import pretrained_fields

        fields_ = pretrained_fields(model.arch, model.pretrained, fields_)
    elif model.name in PRESETS:
        fields_.update(PRESETS[model.name])
    elif not model.hf_config:
        raise ConfigError(f"model: unknown preset {model.name!r}; presets: {', '.join(sorted(PRESETS))}")
    fields_.update(model.hf_config)
    fields_.setdefault("vocab_size", VOCAB_SIZE)
    fields_.setdefault("bos_token_id", min(256, fields_["vocab_size"] - 1))
    fields_.setdefault("eos_token_id", min(257, fields_["vocab_size"] - 1))
    fields_.setdefault("pad_token_id", fields_["eos_token_id"])
    builder = {"gpt2": _gpt2, "llama": _llama, "opt": _opt}[model.arch]
    try:
        adapter = builder(model.name, fields_)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"model: invalid {model.arch} config fields {sorted(model.hf_config)}: {error}"
        ) from None
    if model.pretrained is not None:
        from oobleck.runtime.engine.pretrained import PretrainedWeights

        adapter.weights = PretrainedWeights(model.pretrained)
    return adapter


def _config(cls: type, fields_: dict[str, Any]) -> Any:
    config = cls(**fields_)
    config._attn_implementation = "sdpa"
    return config


def _decoder_adapter(
    name: str,
    arch: str,
    config: Any,
    *,
    blocks: int,
    hidden_size: int,
    init_std: float,
    embedding_weight: str,
    factories: dict[str, Callable[[int], nn.Module]],
) -> ModelAdapter:
    """The adapter of a decoder laid out as embedding, ``blocks`` blocks, head.

    Every architecture shares this layout and ties the head's ``lm_head.weight`` to the embedding's
    ``embedding_weight`` exactly when its config sets ``tie_word_embeddings``; only the HF field names
    of the sizes differ, so the caller passes those values in.
    """
    layers = blocks + 2
    tied = (
        (TiedWeight(layers - 1, "lm_head.weight", 0, embedding_weight),) if config.tie_word_embeddings else ()
    )
    adapter = ModelAdapter(
        name=name,
        arch=arch,
        hf_config=config,
        num_layers=layers,
        hidden_size=hidden_size,
        vocab_size=config.vocab_size,
        init_std=init_std,
        config_dict=config.to_dict(),
        tied=tied,
    )
    adapter._factories = factories
    return adapter


def _gpt2(name: str, fields_: dict[str, Any]) -> ModelAdapter:
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    config = _config(GPT2Config, fields_)
    eps = config.layer_norm_epsilon
    factories: dict[str, Callable[[int], nn.Module]] = {
        "embedding": lambda _: _GPT2Embedding(config),
        "block": lambda i: _Block(GPT2Block(config, layer_idx=i - 1)),
        "head": lambda _: _Head(nn.LayerNorm(config.n_embd, eps=eps), config.vocab_size, config.n_embd, None),
    }
    return _decoder_adapter(
        name,
        "gpt2",
        config,
        blocks=config.n_layer,
        hidden_size=config.n_embd,
        init_std=config.initializer_range,
        embedding_weight="wte.weight",
        factories=factories,
    )


def _llama(name: str, fields_: dict[str, Any]) -> ModelAdapter:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaDecoderLayer,
        LlamaRMSNorm,
        LlamaRotaryEmbedding,
    )

    config = _config(LlamaConfig, fields_)
    hidden = config.hidden_size
    factories: dict[str, Callable[[int], nn.Module]] = {
        "embedding": lambda _: _Embedding(nn.Embedding(config.vocab_size, hidden)),
        "block": lambda i: _Block(LlamaDecoderLayer(config, layer_idx=i - 1), LlamaRotaryEmbedding(config)),
        "head": lambda _: _Head(
            LlamaRMSNorm(hidden, eps=config.rms_norm_eps), config.vocab_size, hidden, None
        ),
    }
    return _decoder_adapter(
        name,
        "llama",
        config,
        blocks=config.num_hidden_layers,
        hidden_size=hidden,
        init_std=config.initializer_range,
        embedding_weight="embed_tokens.weight",
        factories=factories,
    )


class _Embedding(nn.Module):
    def __init__(self, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def _opt(name: str, fields_: dict[str, Any]) -> ModelAdapter:
    from transformers import OPTConfig
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    config = _config(OPTConfig, fields_)
    if not config.do_layer_norm_before:
        raise ConfigError("model.do_layer_norm_before: only pre-norm OPT (true) is supported, got false")
    hidden, proj_dim = config.hidden_size, config.word_embed_proj_dim

    def head(_: int) -> nn.Module:
        proj = nn.Linear(hidden, proj_dim, bias=False) if proj_dim != hidden else None
        norm = nn.LayerNorm(hidden, elementwise_affine=config.layer_norm_elementwise_affine)
        return _Head(norm, config.vocab_size, proj_dim, proj)

    factories: dict[str, Callable[[int], nn.Module]] = {
        "embedding": lambda _: _OPTEmbedding(config),
        "block": lambda i: _Block(OPTDecoderLayer(config, layer_idx=i - 1)),
        "head": head,
    }
    return _decoder_adapter(
        name,
        "opt",
        config,
        blocks=config.num_hidden_layers,
        hidden_size=hidden,
        init_std=config.init_std,
        embedding_weight="embed_tokens.weight",
        factories=factories,
    )
