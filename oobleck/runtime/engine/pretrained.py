"""Pretrained HF weights in and out: each rank reads only its layers' tensors; export writes an HF folder.

A local HF model folder (``save_pretrained`` output) holds ``config.json`` and either one
``model.safetensors`` or shards named by ``model.safetensors.index.json``. :class:`PretrainedWeights`
maps the adapters' per-layer parameter names to the checkpoint's names (:func:`hf_name`) and reads
each tensor lazily with ``safetensors.safe_open``: a rank touches only the shards and tensors of the
layers it builds. :func:`export_hf` goes the other way, from the engine's checkpoint tensors to an
HF model folder that ``AutoModelForCausalLM.from_pretrained`` loads.

Assumptions:
    * Names follow the HF ``*ForCausalLM`` layout (``transformer.`` for GPT-2, ``model.`` for LLaMA,
      ``model.decoder.`` for OPT); a checkpoint of the bare base model (no such prefix, e.g. OpenAI's
      original ``gpt2``) is accepted too.
    * A tied head (``tie_word_embeddings``) has no ``lm_head.weight`` of its own in the file
      (``save_pretrained`` drops the duplicate): it is read from the embedding's tensor.
    * Only safetensors files are read (never pickled ``pytorch_model.bin``): loading runs no code.
    * The folder is readable at the same path on every node (a shared file system or a copy): a rank
      reads it when it builds a layer, at job start and when recovery gives it a layer it lacked
      (the transferred state then overwrites what was read).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from oobleck.runtime.engine.adapters import ModelAdapter

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_BASE = {"gpt2": "transformer", "llama": "model", "opt": "model.decoder"}
"""Prefix of the base model's parameters in the HF causal-LM classes."""
_BLOCKS = {"gpt2": "h", "llama": "layers", "opt": "layers"}
_HEAD = {
    "gpt2": {"norm": "ln_f"},
    "llama": {"norm": "norm"},
    "opt": {"norm": "final_layer_norm", "proj": "project_out"},
}
"""Head sub-module (our name) -> HF base-model sub-module; ``lm_head`` sits outside the base."""


def hf_name(arch: str, kind: str, block: int, name: str) -> str:
    """The HF causal-LM parameter name of parameter ``name`` of one of our layers.

    Args:
        arch: ``gpt2``, ``llama`` or ``opt``.
        kind: the layer's kind, ``embedding``, ``block`` or ``head``.
        block: the block's index among blocks (layer index - 1); ignored for other kinds.
        name: the parameter's name inside our layer module.

    Returns:
        E.g. ``transformer.h.3.attn.c_attn.weight`` for GPT-2's ``block.attn.c_attn.weight`` of block 3.
    """
    base = _BASE[arch]
    if kind == "embedding":
        return f"{base}.{name}"
    if kind == "block":
        return f"{base}.{_BLOCKS[arch]}.{block}.{name.removeprefix('block.')}"
    module, _, rest = name.partition(".")
    if module == "lm_head":
        return name
    return f"{base}.{_HEAD[arch][module]}.{rest}"


def _candidates(arch: str, full: str) -> list[str]:
    """``full`` and its spelling in a base-model checkpoint (without the causal-LM prefix)."""
    prefix = _BASE[arch].split(".")[0] + "."
    return [full, full.removeprefix(prefix)] if full.startswith(prefix) else [full]


class PretrainedWeights:
    """The tensors of a local HF model folder, read lazily per layer."""

    def __init__(self, folder: str | Path) -> None:
        """Read the folder's index (or the one file's header); no tensor is read yet.

        Raises:
            ConfigError: the folder has no safetensors weights or an unreadable index.
        """
        self.folder = Path(folder)
        self.weight_map = _weight_map(self.folder)
        self.read_names: list[str] = []
        """HF names read so far, in order (what this rank loaded; tests check it is only its layers)."""

    def _resolve(self, adapter: ModelAdapter, index: int, name: str) -> str:
        sources = {(t.layer, t.name): (t.source_layer, t.source_name) for t in adapter.tied}
        layers = [(index, name)]
        if (index, name) in sources:
            layers.append(sources[(index, name)])  # NOTE: a tied copy is stored under its source's name.
        tried: list[str] = []
        for layer, param in layers:
            full = hf_name(adapter.arch, adapter.layer_kind(layer), layer - 1, param)
            for candidate in _candidates(adapter.arch, full):
                if candidate in self.weight_map:
                    return candidate
                tried.append(candidate)
        raise ConfigError(
            f"model.pretrained {self.folder}: tensor {tried[0]} (layer {index} {name}) is missing "
            f"(looked for {tried}); is it a {adapter.arch} checkpoint of this model?"
        )

    def load_layer(self, adapter: ModelAdapter, index: int, module: nn.Module) -> None:
        """Copy the checkpoint's tensors of layer ``index`` into ``module``'s parameters.

        Each tensor's shape is checked from the file header before it is read.

        Raises:
            ConfigError: a tensor is missing or has another shape than the module's parameter; the
                message names the tensor, both shapes and the file.
        """
        wanted = {name: self._resolve(adapter, index, name) for name, _ in module.named_parameters()}
        by_file: dict[str, list[str]] = {}
        for name, key in sorted(wanted.items()):
            by_file.setdefault(self.weight_map[key], []).append(name)
        from safetensors import safe_open

        params = dict(module.named_parameters())
        with torch.no_grad():
            for file, names in sorted(by_file.items()):
                with safe_open(str(self.folder / file), framework="pt") as handle:
                    for name in names:
                        key, param = wanted[name], params[name]
                        shape = tuple(handle.get_slice(key).get_shape())
                        if shape != tuple(param.shape):
                            raise ConfigError(
                                f"model.pretrained {self.folder / file}: tensor {key} has shape "
                                f"{list(shape)}, the model's config needs {list(param.shape)}; the "
                                "config.json does not match the weights (or hf_config overrides a size)"
                            )
                        param.copy_(handle.get_tensor(key).to(param.dtype))
                        self.read_names.append(key)


def pretrained_fields(arch: str, folder: str | Path, defaults: Mapping[str, object]) -> dict[str, object]:
    """HF config fields of a pretrained folder, with the adapters' dropout defaults applied over them.

    ``tie_word_embeddings`` and every size come from the folder's ``config.json``; only the keys of
    ``defaults`` that switch dropout off override it (a split model cannot reproduce one-process
    training with dropout on; set a dropout in ``model:`` to get it back).

    Raises:
        ConfigError: ``config.json`` is unreadable or of another architecture.
    """
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.pretrained: {path} unreadable ({error!r})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != arch:
        found = raw.get("model_type") if isinstance(raw, dict) else raw
        raise ConfigError(f"model.pretrained: {path} is model_type {found!r}, not {arch!r}")
    dropout = {k: v for k, v in defaults.items() if k != "tie_word_embeddings"}
    return {**raw, **dropout}


def _weight_map(folder: Path) -> dict[str, str]:
    """HF tensor name -> file name (relative to ``folder``), from the index or the single file's header."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"model.pretrained: {index} unreadable ({error!r})") from None
        bad = [f for f in set(mapping.values()) if "/" in f or not (folder / f).is_file()]
        if bad:
            raise ConfigError(f"model.pretrained: {index} names missing shard(s) {sorted(bad)}")
        return {str(k): str(v) for k, v in mapping.items()}
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise ConfigError(
            f"model.pretrained {folder}: no {SINGLE_FILE} or {INDEX_FILE}; save the model with "
            "save_pretrained(safe_serialization=True) (pickled .bin weights are not read)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE_FILE)
    except Exception as error:  # NOTE: safetensors raises its own SafetensorError for a bad header.
        raise ConfigError(f"model.pretrained: {single} is not a valid safetensors file ({error})") from None


def hf_state_dict(adapter: ModelAdapter, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF causal-LM parameters from the engine's per-layer tensors (``layers.<i>.param.<name>``).

    Tied copies are left out (HF re-ties them on load), as ``save_pretrained`` leaves them out.

    Raises:
        ConfigError: a layer's parameter is missing from ``tensors``.
    """
    tied = {(t.layer, t.name) for t in adapter.tied}
    out: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        modules = {kind: adapter._factories[kind] for kind in ("embedding", "block", "head")}
        names = {
            i: [n for n, _ in modules[adapter.layer_kind(i)](i).named_parameters()]
            for i in range(adapter.num_layers)
        }
    for index in range(adapter.num_layers):
        for name in names[index]:
            if (index, name) in tied:
                continue
            key = f"layers.{index}.param.{name}"
            if key not in tensors:
                raise ConfigError(f"checkpoint: tensor {key} is missing; the checkpoint is not of this model")
            out[hf_name(adapter.arch, adapter.layer_kind(index), index - 1, name)] = tensors[key]
    return out


def export_hf(adapter: ModelAdapter, tensors: Mapping[str, torch.Tensor], folder: Path) -> Path:
    """Write the model in ``tensors`` as an HF folder (``config.json`` + ``model.safetensors``).

    Args:
        adapter: the job's model adapter (its HF config is written).
        tensors: the engine's state tensors (a checkpoint's), optimizer moments are ignored.
        folder: where to write; created if needed.

    Returns:
        ``folder``.

    Raises:
        ConfigError: the tensors do not cover the model's parameters exactly.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(adapter.hf_config)
    state = hf_state_dict(adapter, tensors)
    params = dict(model.named_parameters())
    missing, unknown = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unknown:
        raise ConfigError(
            f"export: parameters missing {missing[:3]} / unknown {unknown[:3]} for {adapter.arch}"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    logger.info("exported %s (%d tensors) to %s", adapter.name, len(state), folder)
    return folder
