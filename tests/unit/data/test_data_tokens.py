"""Token files and tokenizers: prepare writes a sidecar, readers trust it, mismatches are named errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import oobleck.data.tokens as tokens_module
from oobleck.data import (
    BYTE_VOCAB_SIZE,
    PYDOC_BPE,
    check_data,
    dtype_for_vocab,
    encode_documents,
    eos_id_of,
    load_tokenizer,
    prepare,
    read_sidecar,
    vocab_size_of,
)
from oobleck.data.__main__ import main as data_main
from oobleck.errors import ConfigError
from oobleck.runtime.config import DataConfig, ModelConfig
from oobleck.runtime.engine.adapters import VOCAB_SIZE
from oobleck.runtime.engine.data import join_rows, load_dataset

DOCS = ("def f(x):\n    return x + 1\n", "The quick brown fox.\n\nJumps over the lazy dog.", "ünïcode ✓")


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    (folder / "ignored.md").write_text("not a .txt file")
    return folder


def test_dtype_follows_vocab_size() -> None:
    """Ids of a vocabulary up to 65536 fit uint16; one more token needs uint32."""
    assert dtype_for_vocab(258) == dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == dtype_for_vocab(128_256) == "uint32"
    with pytest.raises(ValueError, match="vocab_size"):
        dtype_for_vocab(0)


def test_builtin_tokenizer_has_eos_and_round_trips() -> None:
    """The shipped pydoc BPE has 1024 tokens, an EOS, and decodes what it encodes."""
    assert vocab_size_of(PYDOC_BPE) == 1024 and eos_id_of(PYDOC_BPE) == 0
    tokenizer = load_tokenizer(PYDOC_BPE)
    text = "for item in sorted(mapping):\n    yield item"
    encoded = tokenizer.encode(text).ids
    assert tokenizer.decode(encoded) == text and len(encoded) < len(text) / 2


def test_prepare_writes_tokens_and_sidecar(tmp_path: Path, texts: Path) -> None:
    """prepare writes each document's ids then EOS, as uint16, with a sidecar naming vocab, EOS and count."""
    out = tmp_path / "tokens.bin"
    meta = prepare(PYDOC_BPE, [texts], out, progress=False)
    expected = encode_documents(PYDOC_BPE, DOCS)
    got = np.fromfile(out, dtype=np.uint16)
    assert np.array_equal(got, expected) and (got == 0).sum() == len(DOCS)
    assert meta == read_sidecar(out)
    sidecar = json.loads((tmp_path / "tokens.bin.json").read_text())
    assert sidecar["vocab_size"] == 1024 and sidecar["eos_id"] == 0 and sidecar["dtype"] == "uint16"
    assert sidecar["count"] == len(expected) and len(sidecar["tokenizer_sha256"]) == 64


def test_tokens_source_trusts_the_sidecar_without_scanning(tmp_path: Path, texts: Path, monkeypatch) -> None:
    """A prepared .bin is memory-mapped and its vocabulary checked from the sidecar: no id is scanned."""
    out = tmp_path / "tokens.bin"
    prepare(PYDOC_BPE, [texts], out, progress=False)

    def no_scan(_: np.ndarray) -> int:
        raise AssertionError("the token file was scanned")

    monkeypatch.setattr(tokens_module, "max_token", no_scan)
    data = DataConfig(source="tokens", path=str(out), token_dtype="int64", sequence_length=4)
    dataset = load_dataset(data, vocab_size=1024)
    assert isinstance(dataset.tokens, np.memmap) and dataset.tokens.dtype == np.uint16
    with pytest.raises(
        ConfigError, match=r"tokens\.bin: vocabulary of 1024 tokens does not fit the model's 258"
    ):
        load_dataset(data, vocab_size=BYTE_VOCAB_SIZE)


def test_sidecar_of_another_file_is_refused(tmp_path: Path, texts: Path) -> None:
    """A sidecar whose count disagrees with the file's size names the sidecar and says to re-run prepare."""
    out = tmp_path / "tokens.bin"
    prepare(PYDOC_BPE, [texts], out, progress=False)
    with out.open("ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(ConfigError, match=r"tokens\.bin\.json: says \d+ uint16 tokens.*re-run prepare"):
        check_data(DataConfig(source="tokens", path=str(out)), 1024)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 4), dtype=np.int64), "expected a 1-D array"),
        (np.zeros(8, dtype=np.float32), "expected integer token ids"),
    ],
)
def test_npy_of_wrong_shape_or_dtype_is_named(tmp_path: Path, array: np.ndarray, message: str) -> None:
    """A 2-D or float .npy fails with the file's name before any worker reads it."""
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ConfigError, match=rf"bad\.npy: {message}"):
        check_data(DataConfig(source="tokens", path=str(path)), 258)


def test_file_without_sidecar_is_scanned_for_its_largest_id(tmp_path: Path) -> None:
    """A hand-made .bin without a sidecar is still checked: its largest id is named against the vocabulary."""
    path = tmp_path / "raw.bin"
    np.array([1, 2, 300, 4], dtype=np.uint16).tofile(path)
    with pytest.raises(
        ConfigError, match=r"raw\.bin: token id 300 is outside .* of 258; set model vocab_size: 301"
    ):
        check_data(DataConfig(source="tokens", path=str(path)), 258)


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path: Path) -> None:
    """A tokenizer with more ids than the model's vocabulary is an error naming it; a smaller one is fine."""
    with pytest.raises(ConfigError, match=r"data\.tokenizer pydoc-bpe: vocabulary of 1024 .* model's 258"):
        check_data(DataConfig(tokenizer=PYDOC_BPE), 258)
    check_data(DataConfig(tokenizer=PYDOC_BPE), 1100)  # NOTE: a padded embedding (more rows) is allowed


def test_text_source_tokenizes_documents_with_eos(texts: Path) -> None:
    """source: text reads the folder's .txt files in order, each followed by the tokenizer's EOS."""
    data = DataConfig(source="text", path=str(texts), tokenizer=PYDOC_BPE, sequence_length=4)
    dataset = load_dataset(data, vocab_size=1024)
    assert np.array_equal(dataset.tokens, encode_documents(PYDOC_BPE, DOCS))
    with pytest.raises(ConfigError, match=r"data\.tokenizer: required"):
        DataConfig(source="text", path=str(texts))


def test_pydoc_with_tokenizer_is_bpe_tokens() -> None:
    """source: pydoc with the built-in tokenizer yields BPE ids (< 1024) with an EOS per topic."""
    dataset = load_dataset(DataConfig(tokenizer=PYDOC_BPE, sequence_length=64), vocab_size=1024)
    assert int(dataset.tokens.max()) < 1024 and (dataset.tokens == 0).sum() > 50


def test_rows_are_joined_with_eos() -> None:
    """input_ids rows become one stream with one EOS after each row (none doubled)."""
    assert join_rows([[5, 6], [7], [8, 9, 2]], eos_id=2).tolist() == [5, 6, 2, 7, 2, 8, 9, 2]


def test_byte_vocab_constant_matches_the_adapters() -> None:
    """The preflight's byte vocabulary equals the adapters' (so both check the same bound)."""
    assert BYTE_VOCAB_SIZE == VOCAB_SIZE
    from oobleck.data import model_vocab_size

    assert model_vocab_size(ModelConfig(name="tiny-gpt2", arch="gpt2")) == VOCAB_SIZE
    assert model_vocab_size(ModelConfig(name="x", arch="gpt2", hf_config={"vocab_size": 1024})) == 1024


def test_cli_prepare_and_bad_input(tmp_path: Path, texts: Path, capsys) -> None:
    """python -m oobleck.data prepare exits 0 and reports the count; a missing input is one line, exit 2."""
    out = tmp_path / "t.bin"
    assert (
        data_main(
            [
                "prepare",
                "--tokenizer",
                PYDOC_BPE,
                "--input",
                str(texts),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "uint16 tokens, vocab 1024, eos 0" in capsys.readouterr().out
    from oobleck.cli import main as oobleck_main

    assert (
        oobleck_main(
            ["data", "prepare", "--tokenizer", PYDOC_BPE, "--input", str(texts), "--output", str(out)]
        )
        == 0
    )
    assert np.array_equal(np.fromfile(out, dtype=np.uint16), encode_documents(PYDOC_BPE, DOCS))
    assert (
        data_main(
            ["prepare", "--tokenizer", PYDOC_BPE, "--input", str(tmp_path / "nope"), "--output", str(out)]
        )
        == 2
    )
    assert "input" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_tokenizer_is_what_training_gives() -> None:
    """Training the pydoc BPE again gives the shipped file byte for byte (deterministic, not stale)."""
    from oobleck.data.tokenizer import PYDOC_BPE_FILE, train_pydoc_tokenizer

    assert train_pydoc_tokenizer() == PYDOC_BPE_FILE.read_text()


def test_hf_tokenizer_folder_gives_its_configured_eos(tmp_path: Path) -> None:
    """An HF tokenizer folder (save_pretrained) is read offline, with the EOS its tokenizer_config names."""
    from transformers import PreTrainedTokenizerFast

    from oobleck.data.tokenizer import PYDOC_BPE_FILE

    hf = PreTrainedTokenizerFast(tokenizer_file=str(PYDOC_BPE_FILE), eos_token="Ġthe")
    hf.save_pretrained(str(tmp_path / "tok"))
    assert vocab_size_of(tmp_path / "tok") == 1024
    assert eos_id_of(tmp_path / "tok") == load_tokenizer(PYDOC_BPE).token_to_id("Ġthe") != 0
