"""``oobleck master`` refuses bad inputs before any agent starts: exit 2, one stderr line, in seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main

JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 2\n"
BOMB = "".join(
    ["  a: &a [" + ",".join(["lol"] * 10) + "]\n"]
    + [f"  {n}: &{n} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, n in zip("abcde", "bcdef", strict=True)]
)


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)


def run_master(tmp_path: Path, capsys: pytest.CaptureFixture[str], **paths: Path) -> str:
    """Run ``oobleck master`` in-process with valid inputs except those given; return its one error line."""
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\nlocalhost slots=1\n")
    job = tmp_path / "job.yaml"
    if not job.exists():
        job.write_text(JOB)
    argv = ["master", "--hostfile", str(paths.get("hosts", hosts)), "--config", str(paths.get("job", job))]
    argv += ["--run-dir", str(paths.get("run_dir", tmp_path / "run"))]
    argv += ["--timeout-s", "2"]  # NOTE: if a check were missing, the job it started fails fast.
    start = time.monotonic()
    code = oobleck_main(argv)
    elapsed_s = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed_s < 3.0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("oobleck master: error: ")
    return lines[0]


def test_binary_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binary config is one line naming file:line."""
    (tmp_path / "job.yaml").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    assert f"{tmp_path}/job.yaml:1: binary data" in run_master(tmp_path, capsys)


def test_config_path_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config path that is a directory is one line saying so."""
    (tmp_path / "conf").mkdir()
    assert "conf: is a directory" in run_master(tmp_path, capsys, job=tmp_path / "conf")


def test_binary_hostfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binary hostfile is one line naming file:line."""
    binary = tmp_path / "hosts.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    assert f"{binary}:1: binary data" in run_master(tmp_path, capsys, hosts=binary)


def test_huge_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config over the size cap is refused by its size."""
    (tmp_path / "job.yaml").write_text(JOB + "#" * (2 << 20))
    assert "bytes is larger than the 1048576 bytes a config file may have" in run_master(tmp_path, capsys)


def test_yaml_bomb_in_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A billion-laughs bomb inside ``model`` is refused on the master, naming the file."""
    (tmp_path / "job.yaml").write_text("model:\n  arch: gpt2\n" + BOMB + "global_batch: 4\nsteps: 2\n")
    assert "job.yaml:" in (line := run_master(tmp_path, capsys))
    assert "YAML aliases expand this value beyond" in line


def test_global_batch_beyond_the_maximum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``global_batch: 1e12`` is refused with the documented maximum."""
    (tmp_path / "job.yaml").write_text(JOB.replace("global_batch: 4", "global_batch: 1e12"))
    assert "global_batch: expected an integer in [1, 1048576]" in run_master(tmp_path, capsys)


def test_run_dir_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--run-dir`` naming a file, or a path under a file, is one line with the reason."""
    file = tmp_path / "file"
    file.write_text("x")
    assert f"--run-dir {file}: exists and is not a directory" in run_master(tmp_path, capsys, run_dir=file)
    line = run_master(tmp_path, capsys, run_dir=file / "run")
    assert f"--run-dir {file}/run: cannot create it ({file} is a file)" in line


def test_unwritable_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unwritable ``--run-dir`` (/proc: refused even to root, unlike chmod) is one line."""
    assert "--run-dir /proc: not writable" in run_master(tmp_path, capsys, run_dir=Path("/proc"))


def test_unwritable_checkpoint_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An uncreatable ``checkpoint.dir`` is one line naming the key, before any node could be blamed."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "job.yaml").write_text(JOB + f"checkpoint: {{every_steps: 1, dir: {tmp_path}/file/ck}}\n")
    assert "job.yaml: checkpoint.dir" in run_master(tmp_path, capsys)


CUSTOM_GPT2 = "model:\n  arch: gpt2\n  n_embd: 64\n  n_head: 4\n  n_positions: 128\n"


def test_misspelt_hf_field_suggests_the_right_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`num_hiden_layers: 4` is refused before any agent starts, suggesting num_hidden_layers."""
    body = JOB.replace("model: tiny-gpt2\n", CUSTOM_GPT2 + "  num_hiden_layers: 4\n")
    (tmp_path / "job.yaml").write_text(body)
    line = run_master(tmp_path, capsys)
    assert "model.num_hiden_layers: not a field of the gpt2 config class" in line
    assert "did you mean num_hidden_layers?" in line


def test_kv_heads_not_dividing_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`num_key_value_heads: 3` with 4 attention heads is one line, not a worker's RuntimeError."""
    model = "model:\n  arch: llama\n  hidden_size: 64\n  num_attention_heads: 4\n  num_key_value_heads: 3\n"
    (tmp_path / "job.yaml").write_text(JOB.replace("model: tiny-gpt2\n", model))
    assert "model.num_key_value_heads: 3 does not divide num_attention_heads=4" in run_master(
        tmp_path, capsys
    )


def test_missing_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `tokens` data path that does not exist is named before any worker tries to load it."""
    data = "data:\n  source: tokens\n  path: missing.npy\n"
    (tmp_path / "job.yaml").write_text(JOB + data)
    assert f"data.path: {tmp_path}/missing.npy is not a file" in run_master(tmp_path, capsys)
