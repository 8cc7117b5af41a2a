"""RunLog: step rows, the recovery record with planning-core phase names, and the sample ledger."""

from __future__ import annotations

import json
from pathlib import Path

from oobleck.runtime.control.membership import Membership
from oobleck.runtime.run_log import RunLog

STEP = {"step": 7, "loss": 2.5, "step_s": 0.04}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recovery_record_is_written_with_the_first_step_after_it(tmp_path: Path) -> None:
    """The reporter writes the step row, then one recovery row whose phases add up from its timestamps."""
    log = RunLog(tmp_path, node=1, ledger=False)
    lost = Membership(generation=2, members=(0, 1), lost=(2,), detected_at=10.2, failure_at=10.0, reason="x")
    log.recovery_started(lost, noticed=10.3, plan_ready=10.35, timing={"rebuild_groups_s": 0.2})
    log.step_done(STEP, generation=2, pipeline=0, sample_ids=(), reporter=True)
    step, recovery = _rows(tmp_path / "metrics.jsonl")
    assert step["loss"] == 2.5 and "event" not in step
    assert recovery["event"] == "recovery" and recovery["lost"] == [2] and recovery["step"] == 7
    phases = recovery["phases_s"]
    assert set(phases) == {"detect", "plan", "rebuild_groups", "transfer_state", "first_step"}
    assert abs(phases["detect"] - 0.3) < 1e-9 and abs(phases["plan"] - 0.05) < 1e-9
    assert (phases["rebuild_groups"], phases["transfer_state"], phases["first_step"]) == (0.2, 0.0, 0.04)
    log.step_done({**STEP, "step": 8}, generation=2, pipeline=0, sample_ids=(), reporter=True)
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None, "recovery", None]


def test_non_reporter_writes_only_its_ledger(tmp_path: Path) -> None:
    """A first-stage worker that is not the reporter appends its sample ids and drops the recovery."""
    log = RunLog(tmp_path, node=3, ledger=True)
    log.recovery_started(Membership(generation=1, members=(3,)), noticed=1.0, plan_ready=1.0, timing={})
    log.step_done(STEP, generation=1, pipeline=2, sample_ids=(4, 5), reporter=False)
    assert not (tmp_path / "metrics.jsonl").exists()
    assert _rows(tmp_path / "ledger" / "node3.jsonl") == [
        {"step": 7, "generation": 1, "pipeline": 2, "sample_ids": [4, 5]}
    ]
    log.step_done(STEP, generation=1, pipeline=2, sample_ids=(), reporter=True)
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None]
