"""Token files: a flat array of token ids (``.bin`` raw or ``.npy``) and the JSON sidecar that describes it.

A ``tokens.bin`` written by ``python -m oobleck.data prepare`` has a ``tokens.bin.json`` beside it
(:class:`TokenFileMeta`): vocabulary size, EOS id, dtype, token count and the tokenizer's SHA-256.
Readers trust the sidecar for the vocabulary check instead of scanning the file, and check the
file's size against the count, so a sidecar of another file or dtype is caught in O(1).

Assumptions:
    * Pure numpy and JSON, no torch: the master's preflight calls these checks before any worker starts.
    * Token ids are non-negative integers; a ``.npy`` is 1-D of an integer dtype (a 2-D or float array
      is the wrong file, e.g. unflattened rows or embeddings).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from oobleck.errors import ConfigError

SIDECAR_SUFFIX = ".json"
"""A token file's sidecar is its name plus this suffix (``tokens.bin.json``)."""
SIDECAR_FORMAT = 1
"""Version of the sidecar's fields; bumped when a field changes meaning."""
TOKEN_DTYPES: tuple[str, ...] = ("uint16", "uint32", "int32", "int64")
"""Element types a token file may have."""


def dtype_for_vocab(vocab_size: int) -> Literal["uint16", "uint32"]:
    """The smallest unsigned dtype that holds every id of a ``vocab_size`` vocabulary.

    Raises:
        ValueError: ``vocab_size`` is not in ``1 .. 2**32``.
    """
    if not 0 < vocab_size <= 1 << 32:
        raise ValueError(f"vocab_size must be in 1..2**32, got {vocab_size}")
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True, slots=True)
class TokenFileMeta:
    """The sidecar of a token file."""

    vocab_size: int
    """Every id in the file is below this (the tokenizer's vocabulary, added tokens included)."""
    eos_id: int
    """The id that ends each document."""
    dtype: str
    """Element type of the raw file, one of :data:`TOKEN_DTYPES`."""
    count: int
    """Tokens in the file."""
    tokenizer_sha256: str
    """SHA-256 of the ``tokenizer.json`` the file was made with."""
    format: int = SIDECAR_FORMAT
    """Sidecar format version."""


def sidecar_path(path: Path) -> Path:
    """Where the sidecar of token file ``path`` lives."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path, meta: TokenFileMeta) -> Path:
    """Write ``meta`` beside token file ``path`` (via a temporary name, so a reader never sees half)."""
    target = sidecar_path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(asdict(meta), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def read_sidecar(path: Path) -> TokenFileMeta | None:
    """The sidecar of token file ``path``, or None when it has none.

    Raises:
        ConfigError: the sidecar exists but is not valid; the message names it.
    """
    target = sidecar_path(path)
    if not target.exists():
        return None
    try:
        raw: Any = json.loads(target.read_text(encoding="utf-8"))
        meta = TokenFileMeta(**raw)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise ConfigError(
            f"{target}: unreadable token-file sidecar ({error}); rewrite it: python -m oobleck.data prepare"
        ) from None
    ints = (meta.vocab_size, meta.eos_id, meta.count, meta.format)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ConfigError(f"{target}: vocab_size, eos_id, count and format must be integers >= 0")
    if meta.dtype not in TOKEN_DTYPES:
        raise ConfigError(f"{target}: dtype: expected one of {list(TOKEN_DTYPES)}, got {meta.dtype!r}")
    if meta.format != SIDECAR_FORMAT:
        raise ConfigError(f"{target}: format {meta.format} is not {SIDECAR_FORMAT}; rewrite it with prepare")
    return meta


def check_vocab_fits(what: str, vocab_size: int, model_vocab_size: int) -> None:
    """Refuse data whose ids may reach ``vocab_size - 1`` for a model of ``model_vocab_size`` tokens.

    Raises:
        ConfigError: ``vocab_size > model_vocab_size``; the message names ``what`` (the file).
    """
    if vocab_size > model_vocab_size:
        raise ConfigError(
            f"{what}: vocabulary of {vocab_size} tokens does not fit the model's {model_vocab_size}; "
            f"set model vocab_size: {vocab_size} (or more), or use the model's own tokenizer"
        )


def open_token_file(path: Path, token_dtype: str, model_vocab_size: int) -> np.ndarray:
    """Open a ``.npy``/``.bin`` token file memory-mapped, after checking it fits the model.

    With a sidecar, dtype and vocabulary come from it and the file's size must match its count: O(1).
    Without one, a ``.bin`` is read as ``token_dtype`` and the ids are scanned once, in chunks, for
    the largest (a file you prepared yourself: add a sidecar to skip the scan).

    Args:
        path: the token file.
        token_dtype: the ``data.token_dtype`` of the job (for a ``.bin`` without a sidecar).
        model_vocab_size: every id must be below this.

    Returns:
        The 1-D token array (read-only memory map).

    Raises:
        ConfigError: the file is missing, of the wrong kind or shape, its sidecar disagrees with it,
            or an id is outside the model's vocabulary; each message names the file.
    """
    if not path.is_file():
        raise ConfigError(f"data.path: token file {path} not found")
    meta = read_sidecar(path)
    if path.suffix == ".npy":
        tokens = _open_npy(path)
    elif path.suffix == ".bin":
        dtype = np.dtype(meta.dtype if meta is not None else token_dtype)
        size_bytes = path.stat().st_size
        if size_bytes % dtype.itemsize:
            raise ConfigError(
                f"{path}: {size_bytes} bytes is not a whole number of {dtype.name} tokens; "
                "set data.token_dtype to the dtype the file was written with"
            )
        if size_bytes == 0:
            raise ConfigError(f"{path}: empty token file")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    else:
        raise ConfigError(f"data.path: expected a .npy or .bin token file, got {path.name!r}")
    if meta is not None:
        if meta.count != len(tokens) or (path.suffix == ".npy" and tokens.dtype.name != meta.dtype):
            raise ConfigError(
                f"{sidecar_path(path)}: says {meta.count} {meta.dtype} tokens, {path.name} holds "
                f"{len(tokens)} {tokens.dtype.name}; the sidecar belongs to another file: re-run prepare"
            )
        check_vocab_fits(str(path), meta.vocab_size, model_vocab_size)
    else:
        top = max_token(tokens)
        if top >= model_vocab_size:
            raise ConfigError(
                f"{path}: token id {top} is outside the model's vocabulary of {model_vocab_size}; "
                f"set model vocab_size: {top + 1} (or more)"
            )
    return tokens


def _open_npy(path: Path) -> np.ndarray:
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable .npy array ({error})") from None
    if tokens.ndim != 1:
        raise ConfigError(
            f"{path}: expected a 1-D array of token ids, got shape {tokens.shape}; flatten it "
            "(np.concatenate of the rows, with an EOS between documents)"
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(
            f"{path}: expected integer token ids, got dtype {tokens.dtype}; save ids, not floats"
        )
    if len(tokens) == 0:
        raise ConfigError(f"{path}: empty token file")
    return tokens


_SCAN_CHUNK = 1 << 24


def max_token(tokens: np.ndarray) -> int:
    """The largest id in ``tokens``, read in chunks of 16 Mi tokens (bounded memory on a memory map).

    Raises:
        ConfigError: a negative id (a signed file holding garbage).
    """
    top, low = 0, 0
    for start in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[start : start + _SCAN_CHUNK])
        top, low = max(top, int(chunk.max())), min(low, int(chunk.min()))
    if low < 0:
        raise ConfigError(f"token file holds a negative id ({low}); token ids are >= 0")
    return top
