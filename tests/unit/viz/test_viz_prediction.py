"""Tests of predicting a recorded run: recovery-constant calibration, recovery prediction, replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.planning.recovery import RecoveryConstants
from oobleck.planning.step_time import StepConstants
from oobleck.viz.prediction import (
    calibrate_constants,
    calibration_summary,
    predict_run,
    prediction_errors,
    simulate_run,
)
from oobleck.viz.recovery import simulated_step_errors
from oobleck.viz.runs import MembershipRecord, RecordedRun, RecoveryRecord, StepRecord

HARDWARE = get_hardware("cpu")
PROFILE = analytic_profile("tiny-gpt2", HARDWARE, microbatch_size=2)
PHASES = {"detect": 0.01, "plan": 0.04, "rebuild_groups": 0.02, "transfer_state": 0.0, "first_step": 0.03}


def _run(tmp_path: Path, step_s: tuple[float, float]) -> RecordedRun:
    steps = tuple(
        StepRecord(
            step=i,
            generation=int(i >= 5),
            loss=1.0,
            samples=16,
            tokens=512,
            step_s=step_s[i >= 5],
            t=10.0 + i,
        )
        for i in range(10)
    )
    memberships = (
        MembershipRecord(
            generation=0, members=(0, 1, 2, 3), lost=(), joined=(), failure_at=0.0, detected_at=9.0
        ),
        MembershipRecord(
            generation=1, members=(0, 1, 2), lost=(3,), joined=(), failure_at=14.5, detected_at=14.5
        ),
    )
    recovery = RecoveryRecord(phases_s=PHASES, lost=(3,))
    return RecordedRun(run_dir=tmp_path, steps=steps, recoveries=(recovery,), memberships=memberships)


def test_constants_are_the_median_of_each_measured_phase() -> None:
    """Detect, plan and the whole rebuild cost come from the medians; other constants stay."""
    records = [RecoveryRecord(phases_s={**PHASES, "plan": plan}) for plan in (0.01, 0.03, 0.5)]
    constants = calibrate_constants(records)
    assert (constants.disconnect_detect_s, constants.plan_s) == (0.01, 0.03)
    assert (constants.rebuild_groups_fixed_s, constants.rebuild_groups_per_group_s) == (0.02, 0.0)
    assert constants.restart_s == RecoveryConstants().restart_s
    summary = calibration_summary(constants, StepConstants(compute_scale=1.0, step_overhead_s=0.01))
    assert "plan_s" in summary and "step_overhead_s" in summary
    with pytest.raises(ConfigError, match="at least one"):
        calibrate_constants([])


def test_prediction_follows_the_runs_failure_and_compares_everything(
    tiny_planner: Planner, tmp_path: Path
) -> None:
    """The prediction reconfigures after the recorded loss and lines up with every measured quantity."""
    run = _run(tmp_path, (0.02, 0.025))
    steps = StepConstants(compute_scale=0.5, bandwidth_scale=1.0)
    predicted = predict_run(run, tiny_planner, calibrate_constants(run.recoveries), steps)
    assert predicted.new_plan.nodes == (0, 1, 2)
    assert predicted.phases_s["first_step"] == predicted.step_after_s
    assert predicted.phases_s["total"] == pytest.approx(
        sum(v for k, v in predicted.phases_s.items() if k != "total")
    )
    errors = prediction_errors(run, predicted)
    assert [e.name for e in errors][-3:] == ["total", "step_before", "step_after"]
    assert errors[-1].measured_s == pytest.approx(0.025)


def test_replay_removes_the_lost_node_at_the_recorded_time(tiny_planner: Planner, tmp_path: Path) -> None:
    """The simulator sees one loss of node 3 at 4.52 s after the first step started (at 9.98 s)."""
    run = _run(tmp_path, (0.02, 0.025))
    result = simulate_run(run, PROFILE, tiny_planner, calibrate_constants(run.recoveries))
    (event,) = result.trace.events
    assert (event.time_s, event.lost) == (pytest.approx(4.52), (3,))
    assert (tmp_path / "trace.csv").read_text() == "4520,remove,node3\n"


def test_replay_charges_the_predicted_step_times_before_and_after_the_loss(
    tiny_planner: Planner, tmp_path: Path
) -> None:
    """With shared-core step constants the simulator's steps equal the prediction's on both sides."""
    run = _run(tmp_path, (0.02, 0.025))
    constants = calibrate_constants(run.recoveries)
    steps = StepConstants(compute_scale=0.5, step_overhead_s=0.004, shared_cores=2)
    predicted = predict_run(run, tiny_planner, constants, steps)
    timeline = simulate_run(run, PROFILE, tiny_planner, constants, steps).result("oobleck").timeline
    before, after = simulated_step_errors(run, timeline, tiny_planner.plan(range(4)).global_batch_size)
    assert before.predicted_s == pytest.approx(predicted.step_before_s, rel=1e-12)
    assert after.predicted_s == pytest.approx(predicted.step_after_s, rel=1e-12)
    assert after.predicted_s < before.predicted_s
