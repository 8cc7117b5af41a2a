"""Local tokenizers: load a ``tokenizer.json`` (or an HF tokenizer folder), find its EOS, fingerprint it.

Assumptions:
    * Tokenizers are local files read with the ``tokenizers`` library (installed with transformers);
      nothing is ever downloaded.
    * A document ends with the tokenizer's EOS id: the ``eos_token`` of ``tokenizer_config.json`` when
      the folder has one, else the first of :data:`EOS_NAMES` the vocabulary holds.
    * The built-in name :data:`PYDOC_BPE` stands for the byte-level BPE tokenizer shipped beside this
      module (:data:`PYDOC_BPE_FILE`); :func:`train_pydoc_tokenizer` regenerates it bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError

PYDOC_BPE = "pydoc-bpe"
"""Built-in tokenizer name: byte-level BPE, 1024 tokens, trained on the bundled pydoc corpus."""
PYDOC_BPE_FILE = Path(__file__).with_name("pydoc_bpe_1024.json")
"""The shipped file of :data:`PYDOC_BPE` (about 20 KB)."""
PYDOC_BPE_VOCAB_SIZE = 1024
"""Vocabulary of :data:`PYDOC_BPE`: 256 byte tokens, one EOS, 767 merges."""
EOS_NAMES: tuple[str, ...] = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|end_of_text|>")
"""Special-token spellings tried, in order, when no ``tokenizer_config.json`` names the EOS."""


def tokenizer_file(path: str | Path) -> Path:
    """The ``tokenizer.json`` that ``path`` (a file, a folder holding one, or :data:`PYDOC_BPE`) names.

    Raises:
        ConfigError: nothing is there; the message names the path and what was expected.
    """
    if str(path) == PYDOC_BPE:
        return PYDOC_BPE_FILE
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "tokenizer.json"
    if not candidate.is_file():
        raise ConfigError(
            f"tokenizer {path}: no tokenizer.json there; give a tokenizer.json file, an HF tokenizer "
            f"folder (save_pretrained of a fast tokenizer) or {PYDOC_BPE!r}"
        )
    return candidate


@functools.cache
def _load(file: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # NOTE: tokenizers raises a bare Exception for a malformed file.
        raise ConfigError(f"tokenizer {file}: not a valid tokenizer.json ({error})") from None


def load_tokenizer(path: str | Path) -> Any:
    """The ``tokenizers.Tokenizer`` at ``path`` (cached per file: every call shares one object).

    Raises:
        ConfigError: the file is missing or malformed.
    """
    return _load(tokenizer_file(path).resolve())


def vocab_size_of(path: str | Path) -> int:
    """Vocabulary size of the tokenizer at ``path``, added tokens included."""
    return int(load_tokenizer(path).get_vocab_size(with_added_tokens=True))


def eos_id_of(path: str | Path) -> int:
    """Id of the token that ends a document for the tokenizer at ``path``.

    Raises:
        ConfigError: the tokenizer has no EOS token the module can find.
    """
    tokenizer = load_tokenizer(path)
    names = list(EOS_NAMES)
    config = tokenizer_file(path).with_name("tokenizer_config.json")
    if config.is_file():
        try:
            eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
        except (OSError, ValueError, AttributeError):
            eos = None
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str):
            names.insert(0, eos)
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    raise ConfigError(
        f"tokenizer {path}: no end-of-document token (looked for {names}); add one as a special token "
        "or set eos_token in tokenizer_config.json"
    )


def tokenizer_sha256(path: str | Path) -> str:
    """SHA-256 of the ``tokenizer.json`` bytes: names the tokenizer a token file was made with."""
    return hashlib.sha256(tokenizer_file(path).read_bytes()).hexdigest()


def pydoc_documents() -> list[str]:
    """The bundled corpus: every ``pydoc_data.topics`` entry, in sorted key order."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def train_pydoc_tokenizer(vocab_size: int = PYDOC_BPE_VOCAB_SIZE) -> str:
    """Train the byte-level BPE tokenizer of :data:`PYDOC_BPE` and return its ``tokenizer.json`` text.

    Deterministic: the same corpus and vocabulary size give the same bytes (the shipped file is this
    function's output; a test checks it). Takes about 1-2 s of CPU.

    Args:
        vocab_size: tokens in the vocabulary (>= 257: 256 bytes plus the EOS).

    Returns:
        The serialised tokenizer (``Tokenizer.from_str`` reads it back).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_NAMES[0]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(pydoc_documents(), trainer)
    return str(tokenizer.to_str())
