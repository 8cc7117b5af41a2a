"""Predict a recorded run: calibrate the recovery constants, plan the recovery, simulate the timeline.

The predictions are made with the same code the runtime plans with (:class:`Planner`) and the
simulator (:func:`~oobleck.sim.simulation.simulate`), fed with the profile the runtime measured, so
the only things a prediction can get wrong are the cost model and its constants. Step times are
priced by the planning core's :class:`~oobleck.planning.step_time.StepConstants`, fitted by
:mod:`oobleck.viz.step_model`; the simulator charges the same ones.

Assumptions:
    * Calibration runs and the run being predicted are different runs of the same job on the same
      machine: constants are fitted on the first and tested on the second, never on the run itself.
    * Calibration runs lose nodes from clusters of about the same size, so they build about the
      same number of process groups; the fixed and the per-group part of the rebuild cost cannot be
      told apart from them, and the whole measured cost is put in the fixed part.
    * Layer copies cost a fixed latency plus bytes over a bandwidth, as the planning core prices
      them: the busiest node's bytes (what its transfer plan puts on one node), so both are fitted
      against the same quantity (:func:`calibrate_transfer`), not against job-wide totals.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oobleck.errors import ConfigError
from oobleck.planning.plan import Plan, Transfer
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.planning.recovery import RecoveryConstants
from oobleck.planning.step_time import StepConstants
from oobleck.sim.config import SimulationConfig
from oobleck.sim.costs import SimCosts
from oobleck.sim.simulation import SimulationResult, simulate
from oobleck.viz.recovery import PredictionError, compare_phases, failure_trace, steady_step_s
from oobleck.viz.runs import RecordedRun, RecoveryRecord

_SECONDS_PER_HOUR = 3600.0
_CALIBRATED = (
    (
        RecoveryConstants,
        (
            "disconnect_detect_s",
            "plan_s",
            "rebuild_groups_fixed_s",
            "rebuild_groups_per_group_s",
            "rebuild_groups_per_rank_s",
            "transfer_latency_s",
            "transfer_bandwidth_bytes_per_s",
        ),
    ),
    (StepConstants, ("compute_scale", "bandwidth_scale", "step_overhead_s", "shared_cores")),
)
"""The constants a calibration sets, by class: what :func:`calibration_summary` shows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPrediction:
    """What the cost model predicts for a recorded run's failure."""

    plan: Plan
    """The plan on the run's initial nodes."""
    new_plan: Plan
    """The plan after the run's first loss."""
    phases_s: dict[str, float]
    """Predicted seconds per recovery phase (``RecoveryPrediction.to_dict()`` keys)."""
    step_before_s: float
    """Predicted steady step time of ``plan``."""
    step_after_s: float
    """Predicted steady step time of ``new_plan`` (also the ``first_step`` phase)."""
    transfers: tuple[Transfer, ...] = ()
    """The layer copies the reconfiguration plans (the runtime executes the same plan)."""


def calibrate_constants(
    recoveries: Sequence[RecoveryRecord],
    base: RecoveryConstants | None = None,
    *,
    transfer: TransferFit | None = None,
) -> RecoveryConstants:
    """Recovery constants fitted to measured recoveries: the median of each measured phase.

    Only the constants of phases that do not scale with the model are fitted: ``disconnect_detect_s``
    (detect), ``plan_s`` (plan) and ``rebuild_groups_fixed_s`` (rebuild groups, with the per-group
    and per-rank costs set to 0, see the module's assumptions). The copies' latency and bandwidth need the
    transfer plans of the runs, so they are fitted by :func:`calibrate_transfer` and passed in. The first
    step is a step of the new plan, priced by the step constants
    (:func:`~oobleck.viz.step_model.calibrate_step_model`), not by these.

    Args:
        recoveries: Measured recoveries from calibration runs (not from the run to predict).
        base: Constants to start from (default: the documented defaults).
        transfer: The copies' measured latency and per-node bandwidth; None keeps ``base``'s.

    Returns:
        The calibrated constants.

    Raises:
        ConfigError: no recoveries, or one that lacks a phase.
    """
    if not recoveries:
        raise ConfigError("calibrate_constants: give at least one measured recovery from a calibration run")
    needed = ("detect", "plan", "rebuild_groups", "transfer_state")
    for record in recoveries:
        missing = [name for name in needed if name not in record.phases_s]
        if missing:
            raise ConfigError(f"calibrate_constants: a recovery lacks phase(s) {missing}")

    def median(name: str) -> float:
        return statistics.median(record.phases_s[name] for record in recoveries)

    base = base or RecoveryConstants()
    latency, bandwidth = base.transfer_latency_s, base.transfer_bandwidth_bytes_per_s
    if transfer is not None:
        latency, bandwidth = transfer.latency_s, transfer.bandwidth_bytes_per_s or bandwidth
    return dataclasses.replace(
        base,
        transfer_latency_s=latency,
        transfer_bandwidth_bytes_per_s=bandwidth,
        disconnect_detect_s=median("detect"),
        plan_s=median("plan"),
        rebuild_groups_fixed_s=median("rebuild_groups"),
        rebuild_groups_per_group_s=0.0,
        # NOTE: the measured medians already include the world's per-rank init on these ranks (in
        # ``plan``: the runtime joins a generation's world before its plan, Engine.join_world).
        rebuild_groups_per_rank_s=0.0,
    )


@dataclass(frozen=True, slots=True)
class TransferFit:
    """The cost model's copy constants as measured: ``latency_s + bytes / bandwidth``."""

    latency_s: float
    """Seconds paid once per recovery that copies anything (>= 0)."""
    bandwidth_bytes_per_s: float | None
    """Per-node bytes per second; None when the runs' times did not grow with their bytes (the
    per-byte cost is below what they can show, so the model's default is kept)."""


def fit_transfer(points: Sequence[tuple[float, float]]) -> TransferFit | None:
    """Least squares of ``seconds = latency + bytes / bandwidth``, neither term negative.

    With copies of one size only the two terms cannot be told apart, and the whole time is put on
    the bytes (the latency is 0), as a bandwidth-only model would.

    Args:
        points: ``(busiest node's bytes, measured seconds)`` of each calibration run that copied.

    Returns:
        The fit, or None without points.
    """
    points = [(b, t) for b, t in points if b > 0 and t > 0]
    if not points:
        return None
    sizes = [b for b, _ in points]
    if len(set(sizes)) < 2:
        return TransferFit(0.0, statistics.median(b / t for b, t in points))
    mean_b = statistics.fmean(sizes)
    mean_t = statistics.fmean(t for _, t in points)
    slope = sum((b - mean_b) * (t - mean_t) for b, t in points) / sum((b - mean_b) ** 2 for b in sizes)
    intercept = mean_t - slope * mean_b
    if slope <= 0:
        return TransferFit(mean_t, None)
    if intercept < 0:
        return TransferFit(0.0, sum(b * b for b in sizes) / sum(b * t for b, t in points))
    return TransferFit(intercept, 1.0 / slope)


def calibrate_transfer(runs: Sequence[RecordedRun], planner: Planner) -> TransferFit | None:
    """The copies' latency and per-node bandwidth measured by calibration runs, in the model's terms.

    The planning core charges a recovery's copies as a latency plus the bytes of its busiest node
    over one bandwidth. For each run that moved state, the planner replans the run's loss (the
    runtime executes the same transfer plan), the model's charge at 1 byte/s and no latency gives
    those busiest-node bytes, and the measured ``transfer_state`` phase is the time;
    :func:`fit_transfer` fits both constants to those points.

    Args:
        runs: Calibration runs with a failure (not the runs to predict).
        planner: The job's planner.

    Returns:
        The fit, or None when no run copied anything.
    """
    unit = RecoveryConstants(transfer_bandwidth_bytes_per_s=1.0)
    points = []
    for run in runs:
        change = planner.reconfigure(planner.plan(run.initial_nodes), lost_nodes=run.failures[0].lost)
        busiest_bytes = planner.predict_recovery(change, unit).transfer_state_s
        points.append((busiest_bytes, run.recoveries[0].phases_s.get("transfer_state", 0.0)))
    return fit_transfer(points)


def transfer_summary(run: RecordedRun, predicted: RunPrediction) -> str:
    """The layer copies the plan made and the ones the runtime recorded, side by side.

    Args:
        run: A recorded run; its ``transfer`` rows of the first recovery's generation are shown.
        predicted: From :func:`predict_run` (its planned transfers).

    Returns:
        Printable text: one line per planned copy, then the recorded copies and the byte totals.
    """
    generation = run.failures[0].generation if run.failures else None
    recorded = [t for t in run.transfers if t.generation == generation]
    lines = [f"planned copies ({sum(t.bytes for t in predicted.transfers)} bytes):"]
    lines += [
        f"  layer {t.layer}: node {t.src_node} -> {t.dst_node}, {t.bytes} bytes" for t in predicted.transfers
    ]
    lines.append(f"recorded copies ({sum(t.bytes for t in recorded)} bytes):")
    lines += [f"  layer {t.layer}: node {t.src} -> {t.dst}, {t.bytes} bytes, {t.ms:.1f} ms" for t in recorded]
    return "\n".join(lines)


def calibration_summary(constants: RecoveryConstants, steps: StepConstants) -> str:
    """The calibrated cost-model constants, one per line, next to their documented defaults.

    Args:
        constants: From :func:`calibrate_constants`.
        steps: From :func:`~oobleck.viz.step_model.calibrate_step_model`.

    Returns:
        Printable text.
    """
    lines = []
    for (cls, names), calibrated in zip(_CALIBRATED, (constants, steps), strict=True):
        default = cls()
        for name in names:
            # NOTE: shared_cores is None on separate machines; shown as 0 cores shared.
            value, fallback = getattr(calibrated, name) or 0, getattr(default, name) or 0
            lines.append(f"{name:<32} {value:>10.4g}   (default {fallback:g})")
    return "\n".join(lines)


def prediction_errors(run: RecordedRun, predicted: RunPrediction) -> tuple[PredictionError, ...]:
    """Every predicted quantity of a run next to its measurement: phases, total, steady steps.

    Args:
        run: The recorded run (its first recovery and the generations around it).
        predicted: From :func:`predict_run`.

    Returns:
        The phases and their total (:func:`~oobleck.viz.recovery.compare_phases`), then
        ``step_before`` and ``step_after``.
    """
    generation = run.failures[0].generation
    return (
        *compare_phases(predicted.phases_s, run.recoveries[0]),
        PredictionError(
            name="step_before",
            predicted_s=predicted.step_before_s,
            measured_s=steady_step_s(run, generation=0),
        ),
        PredictionError(
            name="step_after",
            predicted_s=predicted.step_after_s,
            measured_s=steady_step_s(run, generation=generation),
        ),
    )


def predict_run(
    run: RecordedRun,
    planner: Planner,
    constants: RecoveryConstants,
    steps: StepConstants | None = None,
) -> RunPrediction:
    """Plan the run's nodes, reconfigure after its first loss, and predict the phases and step times.

    Args:
        run: A recorded run with a failure.
        planner: The job's planner (same profile, hardware, f and batch as the runtime used), so
            the plans are the ones the runtime executed.
        constants: Recovery constants (e.g. from :func:`calibrate_constants` on other runs).
        steps: Step-time constants (from
            :func:`~oobleck.viz.step_model.calibrate_step_model` on other runs); ``None`` prices
            steps with the profile and hardware spec as they are.

    Returns:
        The prediction; its ``first_step`` phase is the predicted step time after the recovery.

    Raises:
        ConfigError: the run recorded no failure or no membership.
        PlanningError: the planner cannot plan the run's nodes.
    """
    if not run.failures:
        raise ConfigError(f"{run.run_dir}: the master recorded no failure; nothing to predict")
    plan = planner.plan(run.initial_nodes)
    change = planner.reconfigure(plan, lost_nodes=run.failures[0].lost)
    steps = steps or StepConstants()
    before = steps.step_s(plan, planner.profile, planner.hardware)
    after = steps.step_s(change.plan, planner.profile, planner.hardware)
    phases = planner.predict_recovery(change, constants, steps).to_dict()
    return RunPrediction(
        plan=plan,
        new_plan=change.plan,
        phases_s=phases,
        step_before_s=before,
        step_after_s=after,
        transfers=tuple(change.transfers),
    )


def simulate_run(
    run: RecordedRun,
    profile: ModelProfile,
    planner: Planner,
    constants: RecoveryConstants,
    steps: StepConstants | None = None,
) -> SimulationResult:
    """Replay the run's failures in the simulator, with the oobleck policy only.

    Writes ``<run_dir>/trace.csv`` (the same nodes removed at the same time after the first step
    started) and ``<run_dir>/simulated-profile.json``; the simulated duration ends with the run's
    last step. The simulator charges every step, and the first step after the recovery, with
    ``steps``: the same step times as :func:`predict_run`, before and after the loss.

    Args:
        run: A recorded run with a failure.
        profile: The profile the runtime planned with.
        planner: The job's planner (supplies hardware, f and the batch).
        constants: Recovery constants the simulator charges.
        steps: Step-time constants (``None``: the profile's prices).

    Returns:
        The simulation result.
    """
    folder = Path(run.run_dir)
    (folder / "trace.csv").write_text(failure_trace(run))
    profile.save(folder / "simulated-profile.json")
    config = SimulationConfig(
        nodes=len(run.initial_nodes),
        hours=(run.steps[-1].t - run.start_t) / _SECONDS_PER_HOUR,
        model=str(folder / "simulated-profile.json"),
        hardware=planner.hardware.name,
        policies=("oobleck",),
        trace=str(folder / "trace.csv"),
        fault_tolerance=planner.fault_tolerance,
        global_microbatches=planner.global_microbatches,
        microbatch_size=planner.microbatch_size,
        costs=SimCosts(recovery=constants, step=steps or StepConstants()),
    )
    return simulate(config)
