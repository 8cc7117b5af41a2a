"""Checks of a job's data against its model, before any worker starts (the master's preflight) and in workers.

Assumptions:
    * Pure Python + numpy: no torch, no model build. The model's vocabulary comes from its config
      (:func:`model_vocab_size`): a pretrained folder's ``config.json``, an explicit ``vocab_size``, or
      the byte vocabulary of the presets.
    * A tokenizer may be smaller than the model's vocabulary (padded embeddings, as nanoGPT's 50304
      for GPT-2's 50257) but never larger: an id the embedding has no row for is the error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from oobleck.data.tokenizer import vocab_size_of
from oobleck.data.tokens import check_vocab_fits, open_token_file
from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from oobleck.runtime.config import DataConfig, ModelConfig

BYTE_VOCAB_SIZE = 258
"""The presets' vocabulary: 256 byte values, BOS (256) and EOS (257); equals the adapters' ``VOCAB_SIZE``."""


def model_vocab_size(model: ModelConfig) -> int:
    """The vocabulary the job's model will have, read from its config without building it.

    Raises:
        ConfigError: a pretrained folder's ``config.json`` is unreadable or lacks ``vocab_size``.
    """
    if "vocab_size" in model.hf_config:
        return int(model.hf_config["vocab_size"])
    if model.pretrained is not None:
        path = Path(model.pretrained) / "config.json"
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"{path}: cannot read vocab_size ({error!r}); is it an HF model folder?"
            ) from None
    return BYTE_VOCAB_SIZE


def check_tokenizer_fits(tokenizer: str | Path, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids do not all fit a model of ``vocab_size`` tokens.

    Raises:
        ConfigError: a missing or malformed tokenizer, or one larger than the model's vocabulary.
    """
    check_vocab_fits(f"data.tokenizer {tokenizer}", vocab_size_of(tokenizer), vocab_size)


def check_data(data: DataConfig, vocab_size: int) -> None:
    """Every check of ``data`` that needs no worker: files exist, kinds and shapes, vocabularies fit.

    Cheap: token files are checked from their sidecar (a file without one is scanned once), text
    files are not read. Called by the master's preflight and by every worker's :func:`load_dataset`.

    Args:
        data: the job's data section (paths already resolved).
        vocab_size: the model's vocabulary (:func:`model_vocab_size`).

    Raises:
        ConfigError: the first problem, naming the file and the fix.
    """
    if data.tokenizer is not None:
        check_tokenizer_fits(data.tokenizer, vocab_size)
    if data.source == "tokens":
        open_token_file(Path(str(data.path)), data.token_dtype, vocab_size)
    elif data.source == "text":
        from oobleck.data.prepare import text_files

        text_files([str(data.path)])
    elif data.source == "hf" and not Path(str(data.path)).is_dir():
        raise ConfigError(f"data.path: dataset directory {data.path} not found (save it with save_to_disk)")
