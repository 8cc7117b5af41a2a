"""Tests of predicting a recorded run: recovery-constant calibration, recovery prediction, replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.planning.recovery import RecoveryConstants
from oobleck.planning.step_time import StepConstants
from oobleck.viz.prediction import (
    TransferFit,
    calibrate_constants,
    calibrate_transfer,
    calibration_summary,
    fit_transfer,
    predict_run,
    prediction_errors,
    simulate_run,
    transfer_summary,
)
from oobleck.viz.recovery import simulated_step_errors
from oobleck.viz.runs import MembershipRecord, RecordedRun, RecoveryRecord, StepRecord, TransferRecord

HARDWARE = get_hardware("cpu")
PROFILE = analytic_profile("tiny-gpt2", HARDWARE, microbatch_size=2)
PHASES = {"detect": 0.01, "plan": 0.04, "rebuild_groups": 0.02, "transfer_state": 0.0, "first_step": 0.03}


def _deep_planner() -> Planner:
    """5 nodes of 5 MB: no node holds tiny GPT-2, so pipelines of 2 and 3 nodes."""
    hardware = dataclasses.replace(HARDWARE, gpu_memory_bytes=5_000_000)
    profile = analytic_profile("tiny-gpt2", hardware, microbatch_size=2)
    return Planner(
        profile, hardware, fault_tolerance=1, global_microbatches=8, microbatch_size=2, max_nodes=5
    )


def _deep_run(
    tmp_path: Path, lost: int, transfer_s: float, copies: tuple[TransferRecord, ...] = ()
) -> RecordedRun:
    steps = tuple(
        StepRecord(step=i, generation=int(i >= 5), loss=1.0, samples=16, tokens=512, step_s=0.1, t=10.0 + i)
        for i in range(10)
    )
    memberships = (
        MembershipRecord(
            generation=0, members=(0, 1, 2, 3, 4), lost=(), joined=(), failure_at=0.0, detected_at=9.0
        ),
        MembershipRecord(
            generation=1,
            members=tuple(n for n in range(5) if n != lost),
            lost=(lost,),
            joined=(),
            failure_at=14.5,
            detected_at=14.5,
        ),
    )
    recovery = RecoveryRecord(phases_s={**PHASES, "transfer_state": transfer_s}, lost=(lost,))
    return RecordedRun(
        run_dir=tmp_path, steps=steps, recoveries=(recovery,), memberships=memberships, transfers=copies
    )


def _busiest_bytes(planner: Planner, lost: int) -> int:
    """The larger of bytes sent and bytes received by the busiest node, counted by hand."""
    change = planner.reconfigure(planner.plan(range(5)), lost_nodes=[lost])
    per_direction: dict[tuple[str, int], int] = {}
    for copy in change.transfers:
        for key in (("sent", copy.src_node), ("received", copy.dst_node)):
            per_direction[key] = per_direction.get(key, 0) + copy.bytes
    return max(per_direction.values())


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


def test_transfer_fit_is_the_busiest_nodes_planned_bytes_against_the_measured_phase(tmp_path: Path) -> None:
    """Each run's point is its busiest node's planned bytes and its transfer phase; a latency and a
    bandwidth through them price another loss's copies."""
    planner = _deep_planner()
    latency, bandwidth = 0.002, 1e8
    losses = (0, 3)
    assert _busiest_bytes(planner, 0) != _busiest_bytes(planner, 3)
    runs = [_deep_run(tmp_path, lost, latency + _busiest_bytes(planner, lost) / bandwidth) for lost in losses]
    fit = calibrate_transfer(runs, planner)
    assert fit is not None
    assert fit.latency_s == pytest.approx(latency, rel=1e-9)
    assert fit.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=1e-9)
    constants = calibrate_constants([r.recoveries[0] for r in runs], transfer=fit)
    assert constants.transfer_latency_s == fit.latency_s
    predicted = predict_run(_deep_run(tmp_path, 4, 0.01), planner, constants)
    assert predicted.phases_s["transfer_state"] == pytest.approx(
        latency + _busiest_bytes(planner, 4) / bandwidth
    )


def test_transfer_fit_keeps_both_terms_non_negative() -> None:
    """Times that do not grow with the bytes are all latency; a line through below zero is all bytes;
    copies of one size are priced as a bandwidth alone (the two terms cannot be told apart)."""
    flat = fit_transfer([(3e5, 0.003), (8e5, 0.0028)])
    assert flat == TransferFit(pytest.approx(0.0029), None)
    steep = fit_transfer([(1e5, 0.0005), (8e5, 0.009)])
    assert steep is not None and steep.latency_s == 0.0
    assert steep.bandwidth_bytes_per_s == pytest.approx((1e10 + 64e10) / (50.0 + 7200.0))
    same = fit_transfer([(4e5, 0.004), (4e5, 0.002), (4e5, 0.008)])
    assert same == TransferFit(0.0, pytest.approx(1e8))
    assert fit_transfer([(0.0, 0.001)]) is None


def test_runs_that_copied_nothing_leave_the_bandwidth_unset(tiny_planner: Planner, tmp_path: Path) -> None:
    """One-node pipelines copy no layer, so no copy constant is measured and the defaults stay."""
    run = _run(tmp_path, (0.02, 0.025))
    assert calibrate_transfer([run], tiny_planner) is None
    constants = calibrate_constants(run.recoveries)
    assert constants.transfer_bandwidth_bytes_per_s is None and constants.transfer_latency_s == 0.0


def test_transfer_summary_lists_planned_and_recorded_copies(tmp_path: Path) -> None:
    """The summary shows every planned copy and the recorded copies of the recovery's generation only."""
    planner = _deep_planner()
    copies = (
        TransferRecord(generation=1, layer=2, src=0, dst=2, bytes=699776, ms=3.0),
        TransferRecord(generation=2, layer=9, src=1, dst=3, bytes=1, ms=1.0),
    )
    run = _deep_run(tmp_path, 3, 0.01, copies)
    predicted = predict_run(run, planner, RecoveryConstants())
    text = transfer_summary(run, predicted)
    assert f"planned copies ({sum(t.bytes for t in predicted.transfers)} bytes)" in text
    assert len(predicted.transfers) == 2
    assert "recorded copies (699776 bytes):\n  layer 2: node 0 -> 2, 699776 bytes, 3.0 ms" in text
    assert "layer 9" not in text
