"""hf sources: input_ids rows joined with EOS, a text column tokenized with the job's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oobleck.data import PYDOC_BPE, encode_documents
from oobleck.errors import ConfigError
from oobleck.runtime.config import DataConfig
from oobleck.runtime.engine.data import load_dataset

datasets = pytest.importorskip("datasets", reason="datasets is the optional hf extra")


def test_input_ids_rows_get_the_tokenizers_eos(tmp_path: Path) -> None:
    """Rows of input_ids are joined with the tokenizer's EOS between documents."""
    datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]]}).save_to_disk(str(tmp_path / "ds"))
    data = DataConfig(source="hf", path=str(tmp_path / "ds"), tokenizer=PYDOC_BPE, sequence_length=2)
    assert load_dataset(data, vocab_size=1024).tokens.tolist() == [5, 6, 7, 0, 8, 9, 0]
    with pytest.raises(ConfigError, match=r"set data\.tokenizer to the tokenizer that made them"):
        load_dataset(DataConfig(source="hf", path=str(tmp_path / "ds"), sequence_length=2), vocab_size=1024)


def test_text_column_uses_the_tokenizer(tmp_path: Path) -> None:
    """A text column is tokenized with data.tokenizer (not bytes), one EOS per row."""
    rows = ["hello world, again and again", "import sys\nsys.exit(0)"]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "ds"))
    data = DataConfig(source="hf", path=str(tmp_path / "ds"), tokenizer=PYDOC_BPE, sequence_length=2)
    tokens = load_dataset(data, vocab_size=1024).tokens
    assert np.array_equal(tokens, encode_documents(PYDOC_BPE, rows))
