"""Hold a prediction against a measurement: recovery phases and step times, predicted vs recorded.

The prediction is the planning core's (:class:`~oobleck.planning.cost.RecoveryPrediction`, whose
``to_dict()`` keys are the phase names) and the simulator's timeline; the measurement is a run
directory read by :mod:`oobleck.viz.runs`. Both speak the same phase names, so comparing them is a
join on the name.

Assumptions:
    * A recorded run has one recovery of interest (the first one); the step after it is measured
      as the ``first_step`` phase and excluded from the post-recovery step time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from oobleck.errors import ConfigError
from oobleck.sim.metrics import TimelinePoint
from oobleck.viz.runs import PHASES, RecordedRun, RecoveryRecord
from oobleck.viz.style import PHASE_COLORS, cycle_color, format_seconds, new_figure

_SMOOTHING_STEPS = 9


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionError:
    """One predicted quantity next to its measurement."""

    name: str
    """A phase name, ``"total"``, or ``"step_before"`` / ``"step_after"`` for steady step times
    (``"sim step_before"`` / ``"sim step_after"`` when the simulator predicted them)."""
    predicted_s: float
    measured_s: float

    @property
    def relative_error(self) -> float:
        """``(predicted - measured) / measured``; positive when the prediction is pessimistic."""
        if self.measured_s <= 0:
            return math.nan
        return (self.predicted_s - self.measured_s) / self.measured_s


def compare_phases(predicted: Mapping[str, float], measured: RecoveryRecord) -> tuple[PredictionError, ...]:
    """Pair every phase the run measured with its prediction, plus the total over those phases.

    Args:
        predicted: ``RecoveryPrediction.to_dict()`` (phase name -> seconds).
        measured: One recovery of a recorded run.

    Returns:
        One entry per measured phase in phase order, then ``"total"``.

    Raises:
        ConfigError: the prediction lacks a phase the run measured.
    """
    missing = [name for name in measured.phases_s if name not in predicted]
    if missing:
        raise ConfigError(f"prediction has no phase {missing}; expected keys {', '.join(PHASES)}")
    errors = [
        PredictionError(name=name, predicted_s=predicted[name], measured_s=measured.phases_s[name])
        for name in PHASES
        if name in measured.phases_s
    ]
    errors.append(
        PredictionError(
            name="total",
            predicted_s=sum(error.predicted_s for error in errors),
            measured_s=sum(error.measured_s for error in errors),
        )
    )
    return tuple(errors)


def steady_step_s(run: RecordedRun, *, generation: int, skip_first: int = 1) -> float:
    """Median step time of one membership generation, leaving out its first steps.

    The first step of a generation includes warm-up (generation 0) or is the recovery's
    ``first_step`` phase (later generations), so it is not steady state.

    Args:
        run: A recorded run.
        generation: Which generation's steps.
        skip_first: Steps of the generation to leave out.

    Returns:
        Seconds.

    Raises:
        ConfigError: the generation has no steps left after skipping.
    """
    times = [step.step_s for step in run.steps if step.generation == generation][skip_first:]
    if not times:
        raise ConfigError(
            f"{run.run_dir}: generation {generation} has no steady steps (skipping {skip_first}); "
            "run more steps after the failure"
        )
    return statistics.median(times)


def simulated_step_errors(
    run: RecordedRun, timeline: Sequence[TimelinePoint], samples_per_step: int
) -> tuple[PredictionError, PredictionError]:
    """The simulator's step time before the run's first failure and after its last recovery, as measured.

    The simulator's timeline holds throughput; a step is ``samples_per_step`` samples, so its step
    time is their ratio. Its first point is the initial plan and its last one the plan after the
    last recovery (a replay of one failure has no later change).

    Args:
        run: The recorded run the simulation replayed.
        timeline: The ``oobleck`` policy's timeline from that simulation.
        samples_per_step: Samples of one global batch.

    Returns:
        ``"sim step_before"`` and ``"sim step_after"`` against the run's steady step times.

    Raises:
        ConfigError: the timeline never trains, or the run recorded no failure.
    """
    training = [point.samples_per_s for point in timeline if point.samples_per_s > 0]
    if not training or not run.failures:
        raise ConfigError(f"{run.run_dir}: need a training timeline and a recorded failure to compare")
    return (
        PredictionError(
            name="sim step_before",
            predicted_s=samples_per_step / training[0],
            measured_s=steady_step_s(run, generation=0),
        ),
        PredictionError(
            name="sim step_after",
            predicted_s=samples_per_step / training[-1],
            measured_s=steady_step_s(run, generation=run.failures[-1].generation),
        ),
    )


def median_errors(per_run: Sequence[Sequence[PredictionError]]) -> tuple[PredictionError, ...]:
    """One prediction against the median measurement of repeated runs of the same scenario.

    A single run on a shared machine measures milliseconds-long phases through the noise of
    whatever else the machine does; repeating the scenario and taking the median measurement of
    each quantity is what tells a model error from one unlucky run.

    Args:
        per_run: The same quantities, in the same order, for each run (e.g.
            :func:`~oobleck.viz.prediction.prediction_errors` of every run).

    Returns:
        One entry per quantity: the common prediction and the median measured seconds.

    Raises:
        ConfigError: no runs, or runs whose quantities or predictions differ (different scenarios).
    """
    if not per_run:
        raise ConfigError("median_errors: give the errors of at least one run")
    first = per_run[0]
    for errors in per_run[1:]:
        if [(e.name, e.predicted_s) for e in errors] != [(e.name, e.predicted_s) for e in first]:
            raise ConfigError(
                "median_errors: the runs differ in quantities or predictions; repeat one scenario"
            )
    return tuple(
        PredictionError(
            name=error.name,
            predicted_s=error.predicted_s,
            measured_s=statistics.median(errors[index].measured_s for errors in per_run),
        )
        for index, error in enumerate(first)
    )


def errors_table(errors: Sequence[PredictionError], per_run: Sequence[Sequence[PredictionError]] = ()) -> str:
    """Text table of predicted and measured seconds and the relative error, one row per entry.

    Args:
        errors: Output of :func:`compare_phases`, possibly with step-time entries appended, or of
            :func:`median_errors`.
        per_run: The runs behind a :func:`median_errors` table: each run's own error is shown in
            one more column, so the spread between runs stays visible.

    Returns:
        Printable text with a header line.

    Raises:
        ConfigError: a run in ``per_run`` does not have the quantities of ``errors``, in order.
    """
    names = [error.name for error in errors]
    if any([error.name for error in run] != names for run in per_run):
        raise ConfigError(f"errors_table: every run must have the quantities {names}, in this order")
    width = max([15, *(len(error.name) for error in errors)])
    runs = "".join(f" {f'run {index + 1}':>7}" for index in range(len(per_run)))
    header = f"{'':<{width}} {'predicted':>10} {'measured':>10} {'error':>8}{runs}"
    lines = [header, "-" * len(header)]
    for row, error in enumerate(errors):
        each = "".join(f" {_percent(errors_of_run[row].relative_error):>7}" for errors_of_run in per_run)
        lines.append(
            f"{error.name:<{width}} {format_seconds(error.predicted_s):>10} "
            f"{format_seconds(error.measured_s):>10} {_percent(error.relative_error):>8}{each}"
        )
    return "\n".join(lines)


def _percent(relative: float) -> str:
    return "-" if math.isnan(relative) else f"{relative:+.0%}"


def plot_recovery_phases(
    predicted: Mapping[str, float], measured: RecoveryRecord, *, title: str = ""
) -> Figure:
    """Predicted and measured recovery as two stacked bars, one segment per phase.

    Args:
        predicted: ``RecoveryPrediction.to_dict()``.
        measured: The recorded recovery.
        title: Figure title (default: both totals).

    Returns:
        The figure.
    """
    figure, (ax,) = new_figure(9, 2.4)
    rows = (("predicted", predicted), ("measured", measured.phases_s))
    for row, (_, phases) in enumerate(rows):
        left = 0.0
        for name in PHASES:
            seconds = float(phases.get(name, 0.0))
            ax.barh(
                row,
                seconds,
                left=left,
                color=PHASE_COLORS[name],
                height=0.6,
                label=name if row == 0 else None,
            )
            left += seconds
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the failure")
    ax.legend(ncols=len(PHASES), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    predicted_total = sum(float(predicted.get(name, 0.0)) for name in PHASES)
    default = (
        f"recovery: predicted {format_seconds(predicted_total)}, measured {format_seconds(measured.total_s)}"
    )
    ax.set_title(title or default, pad=22)
    return figure


def plot_prediction_errors(
    errors: Sequence[PredictionError], per_run: Sequence[Sequence[PredictionError]] = (), *, title: str = ""
) -> Figure:
    """Relative error of each predicted quantity: a bar at the median measurement, a dot per run.

    Args:
        errors: From :func:`median_errors` (or one run's errors).
        per_run: The runs behind ``errors`` (same quantities, same order), drawn as dots.
        title: Figure title.

    Returns:
        The figure; quantities the runs did not measure (zero seconds) are drawn empty.

    Raises:
        ConfigError: a run in ``per_run`` does not have the quantities of ``errors``, in order.
    """
    names = [error.name for error in errors]
    if any([error.name for error in run] != names for run in per_run):
        raise ConfigError(
            f"plot_prediction_errors: every run must have the quantities {names}, in this order"
        )
    figure, (ax,) = new_figure(9, 0.4 * len(errors) + 1.2)
    rows = range(len(errors))
    medians = [100 * error.relative_error for error in errors]
    ax.barh(
        rows,
        [0.0 if math.isnan(v) else v for v in medians],
        color=cycle_color(0),
        height=0.6,
        label="median run",
    )
    for index, run in enumerate(per_run):
        label = "each run" if index == 0 else None
        ax.plot(
            [100 * e.relative_error for e in run], rows, "o", color=cycle_color(1), markersize=4, label=label
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlabel("prediction error, % of measured (positive: pessimistic)")
    ax.legend(fontsize=8, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or "predicted against measured")
    return figure


def plot_run_vs_prediction(
    run: RecordedRun, predicted: Sequence[TimelinePoint], *, end_s: float, title: str = ""
) -> Figure:
    """Measured throughput per step against the simulator's predicted timeline, on one time axis.

    Measured points sit at the end of each step (seconds since the run's first step started) at
    that step's ``samples / step_s``, with a running median through them (single steps of a small
    job on a shared machine are noisy); the prediction is the simulator's step function. Red lines
    mark the failures the master recorded.

    Args:
        run: A recorded run.
        predicted: The ``oobleck`` policy's timeline from a simulation of the same job and failure.
        end_s: Where the predicted step function ends (the simulated duration, seconds).
        title: Figure title (default: the run directory's name).

    Returns:
        The figure.
    """
    figure, (ax,) = new_figure(9, 3.2)
    start = run.start_t
    ax.stairs(
        [point.samples_per_s for point in predicted],
        [point.time_s for point in predicted] + [end_s],
        color=cycle_color(0),
        baseline=None,
        linewidth=1.5,
        label="predicted (simulator)",
    )
    times = [step.t - start for step in run.steps]
    rates = [step.samples_per_s for step in run.steps]
    ax.plot(times, rates, "o", markersize=3, alpha=0.5, color=cycle_color(1), label="measured (each step)")
    half = _SMOOTHING_STEPS // 2
    smoothed = [statistics.median(rates[max(0, i - half) : i + half + 1]) for i in range(len(rates))]
    ax.plot(times, smoothed, color=cycle_color(1), label=f"measured ({_SMOOTHING_STEPS}-step median)")
    for failure in run.failures:
        ax.axvline(failure.failure_at - start, color="red", alpha=0.5, linewidth=1)
    ax.set_xlabel("seconds since the first step started; red: node killed")
    ax.set_ylabel("samples / s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or Path(run.run_dir).name)
    return figure


def failure_trace(run: RecordedRun) -> str:
    """The run's node losses as a simulator trace (``time_ms,remove,node<k>`` lines).

    Times are measured from the start of the run's first step, so the simulator kills the same
    nodes at the same point of training.

    Args:
        run: A recorded run with at least one failure recorded by the master.

    Returns:
        The CSV text, one line per lost node.

    Raises:
        ConfigError: the run recorded no failure.
    """
    if not run.failures:
        raise ConfigError(f"{run.run_dir}: the master recorded no failure; nothing to replay")
    start = run.start_t
    return "".join(
        f"{round((failure.failure_at - start) * 1000)},remove,node{node}\n"
        for failure in run.failures
        for node in failure.lost
    )
