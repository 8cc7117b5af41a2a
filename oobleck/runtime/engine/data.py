"""Training data: token sources, fixed-length samples and the global seeded sampler.

The sampler is the whole data-position story of the runtime: step ``k`` consumes positions
``[k·G, (k+1)·G)`` of an endless stream made of seeded per-epoch permutations of the sample ids,
and pipeline ``p`` takes the contiguous slice that starts at ``first_microbatch(p) · microbatch_size``.
Because it depends only on (seed, step, plan), a redone step after recovery reads exactly the same
samples, whatever the new plan: nothing is skipped or repeated.

Assumptions:
    * A sample is ``sequence_length + 1`` consecutive tokens (inputs and shifted labels); samples
      do not overlap. The tail of the token stream shorter than one sample is unused.
    * The bundled corpus is CPython's ``pydoc_data.topics`` prose, tokenised byte by byte (vocab
      256 + BOS/EOS) by default, or with ``data.tokenizer`` (e.g. the shipped ``pydoc-bpe``); it needs
      no download.
    * Checks that need no model live in :mod:`oobleck.data` (pure, also run by the master's preflight);
      this module opens the data once they pass.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from oobleck.data.prepare import encode_documents, read_document, text_files
from oobleck.data.tokenizer import eos_id_of, pydoc_documents
from oobleck.data.tokens import open_token_file
from oobleck.data.validate import BYTE_VOCAB_SIZE, check_tokenizer_fits
from oobleck.errors import ConfigError
from oobleck.runtime.config import DataConfig

BOS_ID = 256
EOS_ID = 257


def byte_tokenize(text: str) -> np.ndarray:
    """Byte-level tokens of ``text`` (UTF-8), framed by BOS and EOS."""
    body = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.concatenate(([BOS_ID], body, [EOS_ID])).astype(np.int64)


@functools.cache
def pydoc_tokens() -> np.ndarray:
    """The offline corpus: every ``pydoc_data.topics`` entry in sorted key order, byte tokens."""
    return np.concatenate([byte_tokenize(text) for text in pydoc_documents()])


class TokenDataset:
    """Non-overlapping windows of ``sequence_length + 1`` tokens over one token array."""

    def __init__(self, tokens: np.ndarray, sequence_length: int) -> None:
        self.tokens = tokens
        self.sequence_length = sequence_length
        self.num_samples = (len(tokens) - 1) // sequence_length if len(tokens) > sequence_length else 0
        if self.num_samples == 0:
            raise ConfigError(
                f"data: {len(tokens)} tokens hold no sample of sequence_length={sequence_length}; "
                "use a shorter data.sequence_length or more data"
            )

    def __len__(self) -> int:
        return self.num_samples

    def batch(self, sample_ids: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Token windows ``[len(sample_ids), sequence_length + 1]`` (int64) for the given ids."""
        length = self.sequence_length
        rows = [np.asarray(self.tokens[i * length : i * length + length + 1]) for i in sample_ids]
        return torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)


def load_dataset(config: DataConfig, vocab_size: int) -> TokenDataset:
    """Open the job's token source.

    Token files are memory-mapped and checked from their sidecar (see
    :func:`oobleck.data.tokens.open_token_file`); text is tokenized in memory with ``data.tokenizer``
    (byte tokens without one), an EOS after each document.

    Args:
        config: the job's data section.
        vocab_size: the model's vocabulary; every token id must be below it.

    Returns:
        The dataset.

    Raises:
        ConfigError: a missing file, an unsupported extension or shape, ``datasets`` not installed
            for an ``hf`` source, or a tokenizer or token ids outside the vocabulary.
    """
    tokenizer = config.tokenizer
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, vocab_size)
    if config.source == "tokens":
        return TokenDataset(
            open_token_file(Path(str(config.path)), config.token_dtype, vocab_size), config.sequence_length
        )
    if config.source == "pydoc":
        tokens = pydoc_tokens() if tokenizer is None else encode_documents(tokenizer, pydoc_documents())
    elif config.source == "text":
        files = text_files([str(config.path)])
        tokens = encode_documents(str(tokenizer), (read_document(f) for f in files))
    else:
        tokens = _hf_dataset(Path(str(config.path)), tokenizer, vocab_size)
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise ConfigError(
            f"data.path {config.path or config.source}: token id {top} is outside the model's vocabulary "
            f"of {vocab_size}; set model vocab_size: {top + 1} (or more)"
        )
    return TokenDataset(tokens, config.sequence_length)


def _hf_dataset(path: Path, tokenizer: str | None, vocab_size: int) -> np.ndarray:
    try:
        import datasets  # NOTE: optional (`pip install datasets`); untyped, see pyproject [tool.mypy]
    except ImportError:
        raise ConfigError(
            "data.source: 'hf' needs the `datasets` package, which is not installed; "
            "pip install datasets, or write a token file with python -m oobleck.data prepare"
        ) from None
    if not path.exists():
        raise ConfigError(f"data.path: dataset directory {path} not found (save it with save_to_disk)")
    dataset = datasets.load_from_disk(str(path))
    if "input_ids" in dataset.column_names:
        return join_rows(dataset["input_ids"], _rows_eos(path, tokenizer, vocab_size))
    if "text" in dataset.column_names:
        if tokenizer is None:
            return np.concatenate([byte_tokenize(text) for text in dataset["text"]])
        return encode_documents(tokenizer, dataset["text"])
    raise ConfigError(f"data.path: dataset {path} needs an 'input_ids' or a 'text' column")


def _rows_eos(path: Path, tokenizer: str | None, vocab_size: int) -> int:
    """The id that separates ``input_ids`` rows: the tokenizer's EOS, or the byte EOS for byte models."""
    if tokenizer is not None:
        return eos_id_of(tokenizer)
    if vocab_size != BYTE_VOCAB_SIZE:
        raise ConfigError(
            f"data.tokenizer: dataset {path} has input_ids for a {vocab_size}-token model; set "
            "data.tokenizer to the tokenizer that made them (its EOS is put between rows)"
        )
    return EOS_ID


def join_rows(rows: Iterable[Sequence[int]], eos_id: int) -> np.ndarray:
    """One token stream of ``input_ids`` rows (documents), each followed by ``eos_id`` (unless it ends so)."""
    parts: list[np.ndarray] = []
    for row in rows:
        ids = np.asarray(row, dtype=np.int64)
        if ids.ndim != 1:
            raise ConfigError(f"data: an input_ids row has shape {ids.shape}; expected a list of token ids")
        parts.append(ids if len(ids) and ids[-1] == eos_id else np.append(ids, eos_id))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class GlobalSampler:
    """Maps (step, pipeline slice) to sample ids of a seeded endless permutation stream."""

    def __init__(self, num_samples: int, *, seed: int, global_batch: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.global_batch = global_batch
        self._epoch: int | None = None
        self._permutation = np.empty(0, dtype=np.int64)

    def _position(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._permutation = rng.permutation(self.num_samples)
            self._epoch = epoch
        return int(self._permutation[offset])

    def step_samples(self, step: int, start: int = 0, count: int | None = None) -> list[int]:
        """Sample ids of positions ``[step·G + start, step·G + start + count)``.

        Args:
            step: the optimizer step.
            start: offset inside the step's global batch (a pipeline's first sample).
            count: samples to return; the rest of the global batch by default.

        Returns:
            Sample ids in consumption order.
        """
        count = self.global_batch - start if count is None else count
        if start < 0 or count < 0 or start + count > self.global_batch:
            raise ValueError(
                f"slice [{start}, {start + count}) is outside the global batch {self.global_batch}"
            )
        base = step * self.global_batch + start
        return [self._position(base + i) for i in range(count)]
