"""Preflight refuses non-text inputs, YAML bombs and unwritable output folders with one line each."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.config import job_config_from_text
from oobleck.runtime.control.preflight import (
    MAX_TEXT_BYTES,
    MAX_YAML_ALIASES,
    MAX_YAML_DEPTH,
    check_checkpoint_dir,
    check_run_dir,
    load_yaml_text,
    read_text_file,
)


def bomb(levels: int, width: int) -> str:
    """A 'billion laughs' document: each level lists ``width`` aliases of the level below."""
    lines = ["a: &a [" + ",".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        name, below = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{below}"] * width) + "]")
    return "\n".join(lines) + "\n"


def one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_text_file_round_trip(tmp_path: Path) -> None:
    """A small UTF-8 file is returned as its text."""
    path = tmp_path / "job.yaml"
    path.write_text("model: tiny-gpt2  # ünïcode comment\n", encoding="utf-8")
    assert read_text_file(path, "config file") == "model: tiny-gpt2  # ünïcode comment\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"model: x\n\x00\x01\x02", r"job.yaml:2: binary data \(a NUL byte\), not text"),
        (b"model: x\nsteps: 3\n\xff\xfe", r"job.yaml:3: byte 0xff is not UTF-8 text"),
    ],
)
def test_binary_file_names_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    """Binary content is refused naming file:line of the first bad byte."""
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as error:
        read_text_file(path, "config file")
    assert one_line(error).startswith(str(path))


def test_directory_device_missing_and_huge(tmp_path: Path) -> None:
    """A directory, a device, a missing path and an oversized file are each one clear line."""
    with pytest.raises(ConfigError, match="is a directory; give the path of the config file itself"):
        read_text_file(tmp_path, "config file")
    with pytest.raises(ConfigError, match="/dev/zero: not a regular file"):
        read_text_file("/dev/zero", "config file")
    with pytest.raises(ConfigError, match="config file not found"):
        read_text_file(tmp_path / "nope.yaml", "config file")
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as out:
        out.truncate(MAX_TEXT_BYTES + 1)  # NOTE: sparse: the size check must not read it.
    with pytest.raises(ConfigError, match=f"{MAX_TEXT_BYTES + 1} bytes is larger than the {MAX_TEXT_BYTES}"):
        read_text_file(huge, "config file")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe (no writer) is refused at once instead of blocking the master."""
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_text_file(fifo, "config file")


def test_billion_laughs_is_refused_quickly() -> None:
    """A bomb under the alias bound is refused by its expanded size, naming the line, in under 0.5 s."""
    text = bomb(levels=6, width=10)  # 60 aliases, 10**6 leaves
    assert text.count("*") <= MAX_YAML_ALIASES
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml:\d+: YAML aliases expand this value beyond"):
        load_yaml_text(text, "bomb.yaml")
    assert time.monotonic() - start < 0.5


def test_alias_count_depth_and_recursion_are_bounded() -> None:
    """Too many aliases, too deep a nesting and a self-containing alias each raise ConfigError."""
    many = "a: &a 1\nb: [" + ",".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(ConfigError, match=rf"t.yaml:2: more than {MAX_YAML_ALIASES} YAML aliases"):
        load_yaml_text(many, "t.yaml")
    deep = "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1)
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
        load_yaml_text(deep, "t.yaml")
    with pytest.raises(ConfigError, match=r"t.yaml:1: recursive YAML alias"):
        load_yaml_text("a: &a [1, *a]\n", "t.yaml")


def test_honest_anchors_and_exponent_floats() -> None:
    """A few anchors still work, and ``3e-4`` is a float (YAML 1.2), while quoted text stays text."""
    data = load_yaml_text("base: &b {lr: 3e-4}\nrun: {<<: *b, steps: 1e3}\nname: '3e-4'\n", "t.yaml")
    assert data == {"base": {"lr": 3e-4}, "run": {"lr": 3e-4, "steps": 1000.0}, "name": "3e-4"}
    with pytest.raises(ConfigError, match=r"t.yaml:2: not valid YAML"):
        load_yaml_text("a: x\n  b: [\n", "t.yaml")


def test_job_text_with_a_bomb_in_the_model_mapping() -> None:
    """The bomb the master used to accept (inside ``model``) is refused before any worker sees it."""
    text = "model:\n  arch: gpt2\n" + "".join(f"  {line}\n" for line in bomb(6, 10).splitlines())
    text += "global_batch: 4\nsteps: 2\n"
    with pytest.raises(ConfigError, match=r"job.yaml:\d+: YAML aliases expand"):
        job_config_from_text(text, source="job.yaml")


def test_run_dir_checks(tmp_path: Path) -> None:
    """A run dir that is a file, lies under a file, or sits on /proc (unwritable even for root) is refused."""
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match=f"--run-dir {file}: exists and is not a directory"):
        check_run_dir(file)
    with pytest.raises(ConfigError, match=f"cannot create it \\({file} is a file\\)"):
        check_run_dir(file / "run")
    with pytest.raises(ConfigError, match="--run-dir /proc: not writable"):
        check_run_dir(Path("/proc"))
    with pytest.raises(ConfigError, match="--run-dir /proc/oobleck-run: cannot create it"):
        check_run_dir(Path("/proc/oobleck-run"))
    check_run_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_checkpoint_dir_checks(tmp_path: Path) -> None:
    """``checkpoint.dir`` must be writable when checkpoints are on; nothing is checked when they are off."""
    file = tmp_path / "file"
    file.write_text("x")
    base = "model: tiny-gpt2\nglobal_batch: 4\nsteps: 2\n"
    bad = job_config_from_text(base + f"checkpoint: {{every_steps: 1, dir: {file}/ck}}\n", source="job.yaml")
    with pytest.raises(ConfigError, match=f"job.yaml: checkpoint.dir {file}/ck: cannot create it"):
        check_checkpoint_dir(bad, tmp_path / "run", source="job.yaml")
    off = job_config_from_text(base + f"checkpoint: {{dir: {file}/ck}}\n", source="job.yaml")
    check_checkpoint_dir(off, tmp_path / "run", source="job.yaml")
    default = job_config_from_text(base + "checkpoint: {every_steps: 1}\n", source="job.yaml")
    check_checkpoint_dir(default, tmp_path / "run", source="job.yaml")
    assert (tmp_path / "run" / "checkpoints").is_dir()
