"""Tests of predicting a recorded run: calibration fits, repricing, recovery prediction, replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.cost import RecoveryConstants
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.viz.prediction import (
    StepCalibration,
    calibrate_constants,
    calibrate_step_model,
    calibration_summary,
    held_out_step_errors,
    predict_run,
    prediction_errors,
    repriced_step_s,
    simulate_run,
    worker_work,
)
from oobleck.viz.runs import MembershipRecord, RecordedRun, RecoveryRecord, StepRecord

HARDWARE = get_hardware("cpu")
PROFILE = analytic_profile("tiny-gpt2", HARDWARE, microbatch_size=2)
PHASES = {"detect": 0.01, "plan": 0.04, "rebuild_groups": 0.02, "transfer_state": 0.0, "first_step": 0.03}


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(
        PROFILE, HARDWARE, fault_tolerance=1, global_microbatches=8, microbatch_size=2, max_nodes=4
    )


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
    summary = calibration_summary(constants, StepCalibration(compute_scale=1.0, step_overhead_s=0.01))
    assert "plan_s" in summary and "step_overhead_s" in summary
    with pytest.raises(ConfigError, match="at least one"):
        calibrate_constants([])


def test_repricing_at_unit_scales_reproduces_the_planned_step_time(planner: Planner) -> None:
    """Scales of 1 give back the planner's own step time; doubling compute doubles the compute part."""
    plan = planner.plan(range(4))
    assert repriced_step_s(plan, PROFILE, HARDWARE, 1.0, 1.0) == pytest.approx(plan.iteration_time_s)
    compute = repriced_step_s(plan, PROFILE, HARDWARE, 1.0, 1e12)
    assert repriced_step_s(plan, PROFILE, HARDWARE, 2.0, 1e12) == pytest.approx(2 * compute)


def test_separate_machines_step_is_the_cost_models_formula_and_is_fitted_back(planner: Planner) -> None:
    """Without shared cores a step is the repriced 1F1B formula, and known factors are fitted back exactly."""
    truth = StepCalibration(compute_scale=0.3, bandwidth_scale=0.05)
    plans = [planner.plan(range(4)), planner.plan(range(3)), planner.plan(range(2))]
    assert truth.step_s(plans[0], PROFILE, HARDWARE) == repriced_step_s(
        plans[0], PROFILE, HARDWARE, 0.3, 0.05
    )
    observations = [(plan, truth.step_s(plan, PROFILE, HARDWARE)) for plan in plans]
    fitted = calibrate_step_model(observations, PROFILE, HARDWARE)
    assert fitted.compute_scale == pytest.approx(0.3)
    assert fitted.bandwidth_scale == pytest.approx(0.05)
    assert (fitted.step_overhead_s, fitted.shared_cores) == (0.0, None)


def test_shared_cores_step_is_the_machines_work_over_its_cores(planner: Planner) -> None:
    """Four one-node pipelines of 2 microbatches on 2 cores take 4c + 2o; after a loss 4c + 1.5o, faster."""
    steps = StepCalibration(compute_scale=0.5, step_overhead_s=0.004, shared_cores=2)
    before, after = planner.plan(range(4)), planner.plan(range(3))
    compute, workers = worker_work(before, PROFILE, HARDWARE)
    assert (workers, worker_work(after, PROFILE, HARDWARE)) == (4, (pytest.approx(compute), 3))
    per_microbatch = 0.5 * compute / 8
    assert steps.step_s(before, PROFILE, HARDWARE) == pytest.approx(4 * per_microbatch + 2 * 0.004)
    assert steps.step_s(after, PROFILE, HARDWARE) == pytest.approx(4 * per_microbatch + 1.5 * 0.004)
    separate = StepCalibration(compute_scale=0.5, step_overhead_s=0.004)
    assert separate.step_s(after, PROFILE, HARDWARE) > separate.step_s(before, PROFILE, HARDWARE)


def test_shared_cores_fit_recovers_known_constants_on_both_branches(planner: Planner) -> None:
    """Compute scale and per-worker overhead come back exactly, with the 2-node plan on its critical path."""
    truth = StepCalibration(compute_scale=0.3, step_overhead_s=0.006, shared_cores=2)
    plans = [planner.plan(range(4)), planner.plan(range(3)), planner.plan(range(2))]
    critical = repriced_step_s(plans[2], PROFILE, HARDWARE, 0.3, 1.0) + 0.006
    assert truth.step_s(plans[2], PROFILE, HARDWARE) == pytest.approx(critical)
    observations = [(plan, truth.step_s(plan, PROFILE, HARDWARE)) for plan in plans]
    fitted = calibrate_step_model(observations, PROFILE, HARDWARE, shared_cores=2)
    assert fitted.compute_scale == pytest.approx(0.3)
    assert fitted.step_overhead_s == pytest.approx(0.006)
    assert (fitted.bandwidth_scale, fitted.shared_cores) == (1.0, 2)


def test_shared_cores_fit_never_returns_a_negative_constant(planner: Planner) -> None:
    """Noisy steps that ask for a negative constant get it at 0 and the other one fitted alone."""
    before, after = planner.plan(range(4)), planner.plan(range(3))
    slower = calibrate_step_model([(before, 0.050), (after, 0.070)], PROFILE, HARDWARE, shared_cores=2)
    assert slower.step_overhead_s == 0.0
    assert slower.step_s(before, PROFILE, HARDWARE) == pytest.approx(0.060)
    assert slower.step_s(after, PROFILE, HARDWARE) == pytest.approx(0.060)
    faster = calibrate_step_model([(before, 0.050), (after, 0.030)], PROFILE, HARDWARE, shared_cores=2)
    assert faster.compute_scale == 0.0
    assert faster.step_overhead_s == pytest.approx((2 * 0.050 + 1.5 * 0.030) / (2**2 + 1.5**2))
    with pytest.raises(ConfigError, match="shared_cores"):
        calibrate_step_model([(before, 0.05)], PROFILE, HARDWARE, shared_cores=0)


def test_held_out_runs_are_predicted_from_the_other_runs_constants(planner: Planner, tmp_path: Path) -> None:
    """Runs generated by one set of constants are each predicted exactly from the others alone."""
    truth = StepCalibration(compute_scale=0.2, step_overhead_s=0.01, shared_cores=2)
    times = tuple(truth.step_s(planner.plan(range(n)), PROFILE, HARDWARE) for n in (4, 3))
    runs = {name: _run(tmp_path / name, times) for name in ("a", "b", "c")}
    errors = held_out_step_errors(runs, planner, shared_cores=2)
    assert [e.name for e in errors] == ["a before", "a after", "b before", "b after", "c before", "c after"]
    assert [e.relative_error for e in errors] == pytest.approx([0.0] * 6, abs=1e-9)
    with pytest.raises(ConfigError, match="at least two runs"):
        held_out_step_errors({"a": runs["a"]}, planner)


def test_prediction_follows_the_runs_failure_and_compares_everything(
    planner: Planner, tmp_path: Path
) -> None:
    """The prediction reconfigures after the recorded loss and lines up with every measured quantity."""
    run = _run(tmp_path, (0.02, 0.025))
    steps = StepCalibration(compute_scale=0.5, bandwidth_scale=1.0)
    predicted = predict_run(run, planner, calibrate_constants(run.recoveries), steps)
    assert predicted.new_plan.nodes == (0, 1, 2)
    assert predicted.phases_s["first_step"] == predicted.step_after_s
    assert predicted.phases_s["total"] == pytest.approx(
        sum(v for k, v in predicted.phases_s.items() if k != "total")
    )
    errors = prediction_errors(run, predicted)
    assert [e.name for e in errors][-3:] == ["total", "step_before", "step_after"]
    assert errors[-1].measured_s == pytest.approx(0.025)


def test_replay_removes_the_lost_node_at_the_recorded_time(planner: Planner, tmp_path: Path) -> None:
    """The simulator sees one loss of node 3 at 4.52 s after the first step started (at 9.98 s)."""
    run = _run(tmp_path, (0.02, 0.025))
    result = simulate_run(run, PROFILE, planner, calibrate_constants(run.recoveries))
    (event,) = result.trace.events
    assert (event.time_s, event.lost) == (pytest.approx(4.52), (3,))
    assert (tmp_path / "trace.csv").read_text() == "4520,remove,node3\n"
