"""`logging: {tensorboard: true}`: the master mirrors metrics.jsonl into TensorBoard event files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from oobleck.errors import ConfigError
from oobleck.runtime.config import job_config_from_text
from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.tensorboard_log import TENSORBOARD_DIR, TensorBoardMirror, scalars_of
from tests.unit.runtime.control_setup import TINY_JOB

STEP = {"step": 3, "generation": 1, "loss": 4.5, "grad_norm": 0.5, "lr": 0.001, "samples": 8, "step_s": 0.5}
RECOVERY = {
    "event": "recovery",
    "step": 3,
    "generation": 1,
    "lost": [2],
    "joined": [],
    "layers_copied": 3,
    "phases_s": {"detect": 1.0, "plan": 0.25},
}


def _rows(path: Path, rows: list[dict], tail: str = "") -> None:
    with path.open("a") as out:
        out.write("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalars_of_step_recovery_and_other_rows() -> None:
    """A step row gives loss, lr, grad norm, step time, samples/s; a recovery row its phases; others none."""
    assert scalars_of(STEP) == [
        ("loss", 3, 4.5),
        ("lr", 3, 0.001),
        ("grad_norm", 3, 0.5),
        ("step_s", 3, 0.5),
        ("samples_per_s", 3, 16.0),
    ]
    assert scalars_of(RECOVERY) == [
        ("recovery/total_s", 3, 1.25),
        ("recovery/detect_s", 3, 1.0),
        ("recovery/plan_s", 3, 0.25),
        ("recovery/lost_nodes", 3, 1.0),
        ("recovery/joined_nodes", 3, 0.0),
        ("recovery/layers_copied", 3, 3.0),
    ]
    assert scalars_of({"event": "membership", "generation": 1, "members": [0]}) == []
    assert scalars_of({**STEP, "step": "3"}) == [] and scalars_of({**STEP, "loss": "x"})[0][0] == "lr"


def test_mirror_writes_complete_rows_once_and_reads_back(tmp_path: Path) -> None:
    """Rows appended in pieces (a half line first) land in TensorBoard once each, with their values."""
    path = tmp_path / "metrics.jsonl"
    _rows(path, [{"event": "membership", "generation": 0, "members": [0]}])
    mirror = TensorBoardMirror(tmp_path)  # NOTE: starts at the end: the membership row was before it.
    _rows(path, [{**STEP, "step": 0, "loss": 5.0}], tail='{"step": 1, "loss": 4.')
    assert mirror.poll() == 5
    with path.open("a") as out:
        out.write('75, "lr": 0.002, "samples": 8, "step_s": 0.25}\n')  # NOTE: the writer ends its line.
    _rows(path, [RECOVERY])
    mirror.close()
    mirror.close()
    got = _scalars(tmp_path / TENSORBOARD_DIR)
    assert got["loss"] == [(0, 5.0), (1, 4.75)]
    assert got["samples_per_s"] == [(0, 16.0), (1, 32.0)]
    assert got["recovery/total_s"] == [(3, 1.25)] and got["recovery/lost_nodes"] == [(3, 1.0)]


def test_master_mirrors_its_job_when_asked(master: Master, tmp_path: Path) -> None:
    """A job with logging.tensorboard submitted to a real master gets its rows in <job_dir>/tensorboard."""
    config = tmp_path / "tb.yaml"
    config.write_text(TINY_JOB + "logging:\n  tensorboard: true\n")
    master.submit(JobSpec.from_path(config), expected_agents=1)
    _rows(master.job_dir / "metrics.jsonl", [STEP, RECOVERY])
    master.close()
    got = _scalars(master.job_dir / TENSORBOARD_DIR)
    assert got["loss"] == [(3, 4.5)] and got["recovery/detect_s"] == [(3, 1.0)]


def test_missing_tensorboard_refuses_the_job_in_one_line(
    master: Master, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the tensorboard package, a job asking for it is refused before it starts, naming the fix."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # NOTE: how Python spells "not installed".
    config = tmp_path / "tb.yaml"
    config.write_text(TINY_JOB + "logging:\n  tensorboard: true\n")
    with pytest.raises(ConfigError, match=r"pip install 'oobleck\[tensorboard\]'") as caught:
        master.submit(JobSpec.from_path(config), expected_agents=1)
    assert "\n" not in str(caught.value) and str(config) in str(caught.value)
    assert master.machine.job is None and not (master.job_dir / TENSORBOARD_DIR).exists()


def test_logging_section_is_validated() -> None:
    """`logging.tensorboard` must be a boolean and the section knows no other key."""
    assert job_config_from_text(TINY_JOB, source="job.yaml").logging.tensorboard is False
    with pytest.raises(ConfigError, match=r"logging\.tensorboard: expected true or false"):
        job_config_from_text(TINY_JOB + "logging: {tensorboard: 'yes'}\n", source="job.yaml")
    with pytest.raises(ConfigError, match=r"logging\.wandb: unknown key; valid keys here: tensorboard"):
        job_config_from_text(TINY_JOB + "logging: {wandb: true}\n", source="job.yaml")
