"""Tests of reading a run directory: steps, recoveries and memberships, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.viz.runs import PHASES, load_run


def _write(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def _step(step: int, t: float, generation: int = 0) -> dict:
    return {
        "step": step,
        "generation": generation,
        "loss": 5.0 - step / 10,
        "samples": 16,
        "tokens": 512,
        "step_s": 0.5,
        "t": t,
    }


def test_rows_are_sorted_into_steps_recoveries_and_memberships(tmp_path: Path) -> None:
    """Step rows, both recovery-row spellings and master membership rows are all understood."""
    phases = dict.fromkeys(PHASES, 0.25)
    rows = [
        {"event": "membership", "generation": 0, "members": [0, 1], "lost": [], "detected_at": 99.0},
        _step(0, 100.5),
        {"event": "membership", "generation": 1, "lost": [1], "failure_at": 100.7, "detected_at": 100.8},
        {
            "event": "recovery",
            "step": 1,
            "generation": 1,
            "lost": [1],
            "phases_s": phases,
            "rebuild_groups_s": 9.0,
        },
        {"event": "recovery", "phases": phases, "restart": True},
        {"event": "recovery", **{f"{name}_s": 0.5 for name in PHASES}},
        {"event": "job_completed", "t": 103.0},
        _step(1, 102.0, generation=1),
    ]
    run = load_run(_write(tmp_path / "run", rows))
    assert [s.step for s in run.steps] == [0, 1]
    assert run.steps[1].samples_per_s == 32.0
    assert run.start_t == 100.0
    assert [r.total_s for r in run.recoveries] == [1.25, 1.25, 2.5]
    assert [r.restart for r in run.recoveries] == [False, True, False]
    assert run.recoveries[0].lost == (1,) and run.recoveries[0].step == 1
    assert [m.generation for m in run.failures] == [1]
    assert run.failures[0].failure_at == 100.7
    assert run.plan is None


def test_plan_json_is_read_when_present(tmp_path: Path) -> None:
    """A run that wrote plan.json exposes it as a dict."""
    run_dir = _write(tmp_path / "run", [_step(0, 1.0)])
    (run_dir / "plan.json").write_text(json.dumps({"global_microbatches": 8}))
    assert load_run(run_dir).plan == {"global_microbatches": 8}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "metrics.jsonl: not found"),
        ("{not json\n", "metrics.jsonl:1: not valid JSON"),
        ('{"step": 0}\n', "metrics.jsonl:1: malformed step row"),
        ('{"event": "recovery", "t": 1}\n', "metrics.jsonl:1: malformed recovery row"),
        ('{"event": "job_started"}\n', "no step rows"),
    ],
)
def test_bad_run_directories_raise_one_line_config_errors(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    """Each malformed run names the file (and line) and what is wrong, in one line."""
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_run(tmp_path)
    assert "\n" not in str(caught.value)


def test_transfer_rows_become_one_record_per_layer_copy(tmp_path: Path) -> None:
    """Each ``transfer`` row is one layer copy with its nodes, bytes and milliseconds, in file order."""
    rows = [
        _step(0, 100.5),
        {"event": "transfer", "generation": 1, "layer": 3, "src": 2, "dst": 1, "bytes": 1000, "ms": 2.5},
        {"event": "transfer", "generation": 1, "layer": 2, "src": 4, "dst": 1, "bytes": 500, "ms": 1.0},
    ]
    run = load_run(_write(tmp_path / "run", rows))
    assert [(t.layer, t.src, t.dst, t.bytes, t.ms) for t in run.transfers] == [
        (3, 2, 1, 1000, 2.5),
        (2, 4, 1, 500, 1.0),
    ]
    assert run.transfers[0].generation == 1


def test_a_transfer_row_missing_its_bytes_is_a_one_line_error(tmp_path: Path) -> None:
    """A malformed transfer row names the file, the line and the row kind."""
    rows = [
        _step(0, 100.5),
        {"event": "transfer", "generation": 1, "layer": 3, "src": 2, "dst": 1, "ms": 2.5},
    ]
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2: malformed transfer row"):
        load_run(_write(tmp_path / "run", rows))


def test_the_transfer_phase_is_the_slowest_receivers_and_the_total_is_kept(tmp_path: Path) -> None:
    """A reporter that received nothing: its first step's wait for the copies becomes the transfer phase."""
    phases = {
        "detect": 0.01,
        "plan": 0.02,
        "rebuild_groups": 0.03,
        "transfer_state": 0.001,
        "first_step": 0.2,
    }
    rows = [
        _step(0, 100.5),
        {"event": "recovery", "generation": 1, "phases_s": phases},
        {"event": "transfer", "generation": 1, "layer": 0, "src": 2, "dst": 3, "bytes": 10, "ms": 10.0},
        {"event": "transfer", "generation": 1, "layer": 1, "src": 3, "dst": 2, "bytes": 20, "ms": 16.0},
        {"event": "transfer", "generation": 2, "layer": 1, "src": 3, "dst": 2, "bytes": 20, "ms": 900.0},
    ]
    (recovery,) = load_run(_write(tmp_path / "run", rows)).recoveries
    assert recovery.phases_s["transfer_state"] == pytest.approx(0.016)
    assert recovery.phases_s["first_step"] == pytest.approx(0.2 - 0.015)
    assert recovery.total_s == pytest.approx(sum(phases.values()))
    plain = load_run(_write(tmp_path / "plain", rows[:2])).recoveries[0]
    assert plain.phases_s == phases
