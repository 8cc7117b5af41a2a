"""``oobleck master`` refuses data that does not fit the model before any agent starts: exit 2, one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oobleck.data import PYDOC_BPE, prepare
from tests.unit.cli.test_master_preflight import run_master

JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 2\ndata:\n{data}"


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)


def test_token_file_of_a_larger_vocab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A prepared token file of a 1024-token vocabulary for a 258-token model names the file and the fix."""
    text = tmp_path / "a.txt"
    text.write_text("some text " * 50)
    prepare(PYDOC_BPE, [text], tmp_path / "t.bin", progress=False)
    (tmp_path / "job.yaml").write_text(JOB.format(data="  source: tokens\n  path: t.bin\n"))
    line = run_master(tmp_path, capsys)
    assert f"{tmp_path}/t.bin: vocabulary of 1024 tokens does not fit the model's 258" in line
    assert "vocab_size: 1024" in line


def test_two_dimensional_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 2-D .npy is refused by name on the master."""
    np.save(tmp_path / "rows.npy", np.zeros((4, 8), dtype=np.int64))
    (tmp_path / "job.yaml").write_text(JOB.format(data="  source: tokens\n  path: rows.npy\n"))
    assert "rows.npy: expected a 1-D array of token ids" in run_master(tmp_path, capsys)


def test_tokenizer_larger_than_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokenizer with more ids than the model has embeddings is one line naming the tokenizer."""
    (tmp_path / "job.yaml").write_text(JOB.format(data=f"  tokenizer: {PYDOC_BPE}\n"))
    assert "data.tokenizer pydoc-bpe: vocabulary of 1024 tokens" in run_master(tmp_path, capsys)
