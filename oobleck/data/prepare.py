"""Tokenize text once into a token file: documents in, ``tokens.bin`` + ``tokens.bin.json`` out (nanoGPT).

Assumptions:
    * A document is one text file (UTF-8) and fits in memory; a folder input stands for its ``*.txt``
      files, in sorted path order, so the output does not depend on directory listing order.
    * Each document's tokens are followed by the tokenizer's EOS id, the same stream ``data: {source:
      text}`` builds in memory (:func:`encode_documents`), so a prepared file and the text source train
      on the same tokens.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from oobleck.data.tokenizer import eos_id_of, load_tokenizer, tokenizer_sha256, vocab_size_of
from oobleck.data.tokens import TokenFileMeta, dtype_for_vocab, write_sidecar
from oobleck.errors import ConfigError

logger = logging.getLogger(__name__)


def text_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The documents ``inputs`` name: files as given, folders as their ``*.txt`` files (sorted, recursive).

    Raises:
        ConfigError: an input does not exist, or a folder holds no ``.txt`` file.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise ConfigError(f"input folder {path}: holds no .txt file; give text files or their folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"input {path}: no such file or folder")
    return files


def read_document(path: Path) -> str:
    """A document's text.

    Raises:
        ConfigError: the file is not UTF-8 text.
    """
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}); convert it or leave it out"
        ) from None


def encode_documents(tokenizer_path: str | Path, documents: Iterable[str]) -> np.ndarray:
    """One token stream: each document's ids, then the EOS id (int64)."""
    tokenizer, eos = load_tokenizer(tokenizer_path), eos_id_of(tokenizer_path)
    encoded = tokenizer.encode_batch(list(documents))  # NOTE: batched: tokenizers encodes in parallel
    parts = [np.asarray([*item.ids, eos], dtype=np.int64) for item in encoded]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def prepare(
    tokenizer_path: str | Path, inputs: Sequence[str | Path], output: Path, *, progress: bool = True
) -> TokenFileMeta:
    """Tokenize ``inputs`` into ``output`` (raw ids) and write its sidecar; atomic (temp name, rename).

    Args:
        tokenizer_path: a ``tokenizer.json``, an HF tokenizer folder, or ``pydoc-bpe``.
        inputs: text files or folders of ``*.txt`` files.
        output: the ``.bin`` file to write; its sidecar is ``<output>.json``.
        progress: show a progress bar (bytes of text read) on stderr.

    Returns:
        The sidecar's contents.

    Raises:
        ConfigError: a missing or non-UTF-8 input, a bad tokenizer, or an output not ending in ``.bin``.
    """
    if output.suffix != ".bin":
        raise ConfigError(f"--output {output}: expected a .bin file name (its sidecar is {output}.json)")
    files = text_files(inputs)
    vocab_size, eos = vocab_size_of(tokenizer_path), eos_id_of(tokenizer_path)
    dtype = dtype_for_vocab(vocab_size)
    tokenizer = load_tokenizer(tokenizer_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    count = 0
    with tmp.open("wb") as handle, _progress(progress, sum(f.stat().st_size for f in files)) as advance:
        for file in files:
            ids = np.asarray([*tokenizer.encode(read_document(file)).ids, eos], dtype=np.int64)
            handle.write(ids.astype(dtype).tobytes())
            count += len(ids)
            advance(file.stat().st_size)
    tmp.replace(output)
    meta = TokenFileMeta(
        vocab_size=vocab_size,
        eos_id=eos,
        dtype=dtype,
        count=count,
        tokenizer_sha256=tokenizer_sha256(tokenizer_path),
    )
    write_sidecar(output, meta)
    logger.info("wrote %d %s tokens of %d documents to %s", count, dtype, len(files), output)
    return meta


@contextlib.contextmanager
def _progress(enabled: bool, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over bytes of text read; ``with`` gives the advance function (a no-op when off)."""
    if not enabled:
        yield lambda _: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("tokenizing", total=total_bytes)
        yield lambda done_bytes: bar.advance(task, done_bytes)
