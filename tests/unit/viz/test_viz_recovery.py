"""Tests of prediction-vs-measurement: phase errors, steady step times, figures and the replay trace."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.sim.metrics import TimelinePoint
from oobleck.viz.recovery import (
    PredictionError,
    compare_phases,
    errors_table,
    failure_trace,
    median_errors,
    plot_prediction_errors,
    plot_recovery_phases,
    plot_run_vs_prediction,
    simulated_step_errors,
    steady_step_s,
)
from oobleck.viz.runs import PHASES, MembershipRecord, RecordedRun, RecoveryRecord, StepRecord

PREDICTED = {
    "detect": 0.1,
    "plan": 0.05,
    "rebuild_groups": 1.2,
    "transfer_state": 0.3,
    "first_step": 0.5,
    "total": 2.15,
}
MEASURED = RecoveryRecord(
    phases_s={"detect": 0.2, "plan": 0.05, "rebuild_groups": 1.0, "transfer_state": 0.25, "first_step": 0.5}
)


def _run(step_times: list[tuple[int, float]]) -> RecordedRun:
    steps, t = [], 10.0
    for index, (generation, step_s) in enumerate(step_times):
        t += step_s
        steps.append(
            StepRecord(step=index, generation=generation, loss=1.0, samples=8, tokens=8, step_s=step_s, t=t)
        )
    failure = MembershipRecord(
        generation=1, members=(0, 1), lost=(2, 3), joined=(), failure_at=12.5, detected_at=12.6
    )
    return RecordedRun(
        run_dir=Path("runs/x"), steps=tuple(steps), recoveries=(MEASURED,), memberships=(failure,)
    )


def test_phases_pair_by_name_and_total_sums_them() -> None:
    """Each measured phase meets its prediction by name; the total is the sum over those phases."""
    errors = compare_phases(PREDICTED, MEASURED)
    assert [e.name for e in errors] == [*PHASES, "total"]
    assert errors[0].relative_error == pytest.approx(-0.5)
    assert errors[-1].predicted_s == pytest.approx(2.15) and errors[-1].measured_s == pytest.approx(2.0)


def test_missing_predicted_phase_is_a_config_error() -> None:
    """A prediction that lacks a measured phase is refused with the expected keys named."""
    with pytest.raises(ConfigError, match="no phase \\['detect'\\]"):
        compare_phases({"plan": 1.0}, RecoveryRecord(phases_s={"detect": 1.0, "plan": 1.0}))


def test_relative_error_of_a_zero_measurement_is_nan() -> None:
    """Nothing measured means no relative error, shown as a dash in the table."""
    error = PredictionError(name="plan", predicted_s=0.1, measured_s=0.0)
    assert math.isnan(error.relative_error)
    assert errors_table([error]).splitlines()[-1].split()[-1] == "-"


def test_repeated_runs_are_compared_at_their_median_and_each_run_keeps_its_column() -> None:
    """Three runs of one scenario: the prediction meets the median measurement; the spread stays shown."""
    per_run = [
        (
            PredictionError(name="plan", predicted_s=0.1, measured_s=m),
            PredictionError(name="total", predicted_s=1.0, measured_s=t),
        )
        for m, t in ((0.08, 1.5), (0.1, 1.0), (0.2, 0.5))
    ]
    plan, total = median_errors(per_run)
    assert (plan.measured_s, total.measured_s) == (0.1, 1.0)
    assert plan.relative_error == total.relative_error == 0.0
    rows = errors_table((plan, total), per_run).splitlines()
    assert rows[0].split()[-6:] == ["run", "1", "run", "2", "run", "3"]
    assert rows[2].split()[-3:] == ["+25%", "+0%", "-50%"]
    assert rows[3].split()[-4:] == ["+0%", "-33%", "+0%", "+100%"]
    with pytest.raises(ConfigError, match="every run must have the quantities"):
        errors_table((plan, total), [per_run[0][:1]])
    mixed = [per_run[0], (per_run[1][0], PredictionError(name="total", predicted_s=2.0, measured_s=1.0))]
    with pytest.raises(ConfigError, match="repeat one scenario"):
        median_errors(mixed)
    with pytest.raises(ConfigError, match="at least one run"):
        median_errors([])


def test_steady_step_time_skips_the_first_step_of_a_generation() -> None:
    """The median leaves out warm-up and the recovery's first step."""
    run = _run([(0, 5.0), (0, 1.0), (0, 1.2), (1, 9.0), (1, 2.0), (1, 2.2), (1, 2.1)])
    assert steady_step_s(run, generation=0) == pytest.approx(1.1)
    assert steady_step_s(run, generation=1) == pytest.approx(2.1)
    with pytest.raises(ConfigError, match="generation 2 has no steady steps"):
        steady_step_s(run, generation=2)


def test_simulated_step_times_come_from_the_first_and_last_training_rates() -> None:
    """The simulator's steps before and after are samples per step over its first and last nonzero rates."""
    run = _run([(0, 5.0), (0, 1.0), (0, 1.2), (1, 9.0), (1, 2.0), (1, 2.2)])
    rates = ((0.0, 8.0), (2.5, 0.0), (2.7, 4.0))
    timeline = [
        TimelinePoint(time_s=t, nodes_up=4, nodes_used=4, samples_per_s=r, min_pipeline_nodes=1, samples=0.0)
        for t, r in rates
    ]
    before, after = simulated_step_errors(run, timeline, samples_per_step=8)
    assert (before.name, before.predicted_s) == ("sim step_before", 1.0)
    assert before.measured_s == pytest.approx(1.1)
    assert (after.predicted_s, after.measured_s) == (2.0, pytest.approx(2.1))
    with pytest.raises(ConfigError, match="training timeline"):
        simulated_step_errors(run, timeline[1:2], samples_per_step=8)


def test_failure_trace_replays_each_lost_node_at_its_time() -> None:
    """Losses become trace lines in milliseconds since the first step started (10 s here)."""
    run = _run([(0, 1.0), (1, 1.0)])
    assert failure_trace(run) == "2500,remove,node2\n2500,remove,node3\n"
    with pytest.raises(ConfigError, match="no failure"):
        failure_trace(RecordedRun(run_dir=Path("r"), steps=run.steps, recoveries=()))


def test_figures_show_both_sides() -> None:
    """The phase figure stacks one bar per phase for each side; the timeline has one dot per step."""
    (ax,) = plot_recovery_phases(PREDICTED, MEASURED).axes
    assert len(ax.patches) == 2 * len(PHASES)
    assert sum(
        p.get_width() for p in ax.patches if round(p.get_y() + p.get_height() / 2) == 1
    ) == pytest.approx(2.0)
    run = _run([(0, 1.0), (0, 1.0), (1, 2.0)])
    timeline = (
        TimelinePoint(
            time_s=0, nodes_up=4, nodes_used=4, samples_per_s=8.0, min_pipeline_nodes=1, samples=0.0
        ),
    )
    (ax,) = plot_run_vs_prediction(run, timeline, end_s=4.0).axes
    (dots,) = ax.get_lines()[:1]
    assert list(dots.get_ydata()) == [8.0, 8.0, 4.0]


def test_error_figure_has_a_bar_per_quantity_at_the_median_and_a_dot_per_run() -> None:
    """Bars are the median runs' errors in percent; each run adds one series of dots."""
    per_run = [
        (
            PredictionError(name="transfer_state", predicted_s=0.01, measured_s=m),
            PredictionError(name="total", predicted_s=0.2, measured_s=t),
        )
        for m, t in ((0.008, 0.25), (0.01, 0.2), (0.02, 0.1))
    ]
    (ax,) = plot_prediction_errors(median_errors(per_run), per_run).axes
    assert [round(p.get_width(), 9) for p in ax.patches] == [0.0, 0.0]
    assert [list(line.get_xdata()) for line in ax.get_lines()[:3]] == [
        pytest.approx([25.0, -20.0]),
        pytest.approx([0.0, 0.0]),
        pytest.approx([-50.0, 100.0]),
    ]
    with pytest.raises(ConfigError, match="every run must have the quantities"):
        plot_prediction_errors(median_errors(per_run), [per_run[0][:1]])
