"""Predict a recorded run: calibrate the recovery constants, plan the recovery, simulate the timeline.

The predictions are made with the same code the runtime plans with (:class:`Planner`) and the
simulator (:func:`~oobleck.sim.simulation.simulate`), fed with the profile the runtime measured, so
the only things a prediction can get wrong are the cost model and its constants.

Assumptions:
    * Calibration runs and the run being predicted are different runs of the same job on the same
      machine: constants are fitted on the first and tested on the second, never on the run itself.
    * Calibration runs lose nodes from clusters of about the same size, so they build about the
      same number of process groups; the fixed and the per-group part of the rebuild cost cannot be
      told apart from them, and the whole measured cost is put in the fixed part.
    * The step-time constants of a shared machine (:class:`StepCalibration`) are told apart by
      plans with different numbers of workers: calibration runs should cover more than two.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oobleck.errors import ConfigError
from oobleck.planning.cost import RecoveryConstants, plan_iteration_time_s, stage_latency_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.sim.config import SimulationConfig
from oobleck.sim.costs import SimCosts
from oobleck.sim.simulation import SimulationResult, simulate
from oobleck.viz.recovery import PredictionError, compare_phases, failure_trace, steady_step_s
from oobleck.viz.runs import RecordedRun, RecoveryRecord

_SECONDS_PER_HOUR = 3600.0
_NO_COST = 1e12
"""A bandwidth scale that makes every transfer free: prices the compute part of a step alone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCalibration:
    """Cost-model constants of the step time, fitted on calibration runs.

    The profile is measured one layer at a time in one otherwise idle process, while the job runs
    several workers that pay per-message latencies the bandwidth figures do not show and CPU work
    outside the microbatches (optimizer update, gradient all-reduce, Python and gloo). With separate
    machines a step is the cost model's own formula (1F1B time of the slowest pipeline plus the
    gradient all-reduce) with every profiled compute time times ``compute_scale`` and every link
    bandwidth times ``bandwidth_scale``, plus ``step_overhead_s``.

    When every node is a worker process on one machine of ``shared_cores`` cores (the local test
    cluster), workers also wait for a core: worker ``w`` needs ``W_w = compute_scale * (its
    microbatches x its layers' profiled compute) + step_overhead_s`` CPU seconds per step and the
    step takes ``max(critical path, sum_w W_w / shared_cores)``. Losing a node removes one
    worker's ``step_overhead_s`` from the machine while the microbatch work stays (the global batch
    is fixed), so on an oversubscribed machine the step gets *faster* after a loss.
    """

    compute_scale: float
    """Compute time in the running job over the profiled compute time (1: the profile is right)."""
    bandwidth_scale: float = 1.0
    """Effective bandwidth in the running job over the hardware spec's (latency included)."""
    step_overhead_s: float = 0.0
    """CPU seconds every worker spends per step outside its microbatches' forward and backward."""
    shared_cores: int | None = None
    """Cores all workers share when they are processes of one machine; ``None``: separate machines."""

    def step_s(self, plan: Plan, profile: ModelProfile, hardware: HardwareSpec) -> float:
        """The step time of ``plan``'s pipelines under these constants (see the class docstring)."""
        critical = repriced_step_s(plan, profile, hardware, self.compute_scale, self.bandwidth_scale)
        critical += self.step_overhead_s
        if self.shared_cores is None:
            return critical
        compute, workers = worker_work(plan, profile, hardware)
        machine = (self.compute_scale * compute + workers * self.step_overhead_s) / self.shared_cores
        return max(critical, machine)


def worker_work(plan: Plan, profile: ModelProfile, hardware: HardwareSpec) -> tuple[float, int]:
    """Profiled compute seconds of one step summed over all workers, and the number of workers.

    A stage on ``g`` devices is ``g`` workers, each running every microbatch of its pipeline
    through the stage's layers at the tensor-parallel speed-up of ``g``.

    Args:
        plan: A plan (its stages and microbatch counts).
        profile: The profile it was planned with.
        hardware: Supplies the tensor-parallel speed-up.

    Returns:
        ``(compute seconds at scale 1, workers)``.
    """
    compute, workers = 0.0, 0
    for pipeline in plan.pipelines:
        for stage in pipeline.template.stages:
            latency = stage_latency_s(
                profile, hardware, stage.first_layer, stage.end_layer, stage.gpus, "none"
            )
            compute += stage.gpus * pipeline.microbatches * latency
            workers += stage.gpus
    return compute, workers


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


def calibrate_constants(
    recoveries: Sequence[RecoveryRecord], base: RecoveryConstants | None = None
) -> RecoveryConstants:
    """Recovery constants fitted to measured recoveries: the median of each measured phase.

    Only the constants of phases that do not scale with the model are fitted: ``disconnect_detect_s``
    (detect), ``plan_s`` (plan) and ``rebuild_groups_fixed_s`` (rebuild groups, with the per-group
    cost set to 0, see the module's assumptions); ``transfer_bandwidth_bytes_per_s`` when the runs
    moved state. The first step is predicted from the profile, not calibrated.

    Args:
        recoveries: Measured recoveries from calibration runs (not from the run to predict).
        base: Constants to start from (default: the documented defaults).

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

    moved = sum(record.transfer_bytes for record in recoveries)
    seconds = sum(record.phases_s["transfer_state"] for record in recoveries)
    bandwidth = moved / seconds if moved > 0 and seconds > 0 else None
    base = base or RecoveryConstants()
    return dataclasses.replace(
        base,
        disconnect_detect_s=median("detect"),
        plan_s=median("plan"),
        rebuild_groups_fixed_s=median("rebuild_groups"),
        rebuild_groups_per_group_s=0.0,
        transfer_bandwidth_bytes_per_s=bandwidth or base.transfer_bandwidth_bytes_per_s,
    )


def scaled_profile(profile: ModelProfile, compute_scale: float) -> ModelProfile:
    """``profile`` with every layer's forward and backward time multiplied by ``compute_scale``."""
    return dataclasses.replace(
        profile,
        layers=tuple(
            dataclasses.replace(
                layer, forward_s=layer.forward_s * compute_scale, backward_s=layer.backward_s * compute_scale
            )
            for layer in profile.layers
        ),
    )


def repriced_step_s(
    plan: Plan, profile: ModelProfile, hardware: HardwareSpec, compute_scale: float, bandwidth_scale: float
) -> float:
    """Step time of ``plan``'s pipelines (same stages, same batch split) under scaled costs.

    Args:
        plan: A plan (its stages and microbatch counts are kept).
        profile: The profile it was planned with.
        hardware: The hardware it was planned for.
        compute_scale: Factor on every layer's forward and backward time.
        bandwidth_scale: Factor on the intra- and inter-node bandwidths.

    Returns:
        Seconds: the slowest pipeline's 1F1B time plus the gradient all-reduce.
    """
    scaled = scaled_profile(profile, compute_scale)
    links = dataclasses.replace(
        hardware,
        intra_node_bandwidth_bytes_per_s=hardware.intra_node_bandwidth_bytes_per_s * bandwidth_scale,
        inter_node_bandwidth_bytes_per_s=hardware.inter_node_bandwidth_bytes_per_s * bandwidth_scale,
    )
    pipelines = []
    for pipeline in plan.pipelines:
        stages = pipeline.template.stages
        repriced = []
        for index, stage in enumerate(stages):
            send = (
                "none"
                if index == len(stages) - 1
                else "intra"
                if stages[index + 1].node == stage.node
                else "inter"
            )
            latency = stage_latency_s(scaled, links, stage.first_layer, stage.end_layer, stage.gpus, send)
            repriced.append(dataclasses.replace(stage, latency_s=latency))
        template = dataclasses.replace(pipeline.template, stages=tuple(repriced))
        pipelines.append(dataclasses.replace(pipeline, template=template))
    return plan_iteration_time_s(pipelines, scaled, links)


def calibrate_step_model(
    observations: Sequence[tuple[Plan, float]],
    profile: ModelProfile,
    hardware: HardwareSpec,
    *,
    shared_cores: int | None = None,
) -> StepCalibration:
    """Least-squares fit of :class:`StepCalibration` to measured steady step times.

    Separate machines: a step is ``compute_scale * A + B / bandwidth_scale`` for a plan whose
    compute part is ``A`` and communication part ``B`` (both priced by the cost model), so the
    two factors come from a linear fit; with fewer than two distinct plans, or a fit that would
    make communication free or negative, only the compute factor is fitted.

    Shared cores: ``compute_scale`` and ``step_overhead_s`` are fitted, the bandwidth factor stays
    1 (over loopback the "links" are CPU work, which ``step_overhead_s`` already prices). Each
    observation is linear in the two on its branch of the ``max`` (critical path or the machine's
    total work over its cores); the branches are found by refitting until they stop changing.
    Both constants are CPU times, so they are fitted non-negative: when the unconstrained fit
    makes one negative (noisy steps on a busy machine), the other is fitted alone.

    Args:
        observations: ``(plan, measured steady step seconds)`` pairs from calibration runs.
        profile: The profile the plans were made with.
        hardware: The hardware spec they were made for.
        shared_cores: Cores all workers share when they are processes of one machine (``None``:
            separate machines).

    Returns:
        The calibration.

    Raises:
        ConfigError: no observations, or ``shared_cores`` below 1.
    """
    if not observations:
        raise ConfigError("calibrate_step_model: give at least one (plan, measured step time) pair")
    if shared_cores is not None and shared_cores < 1:
        raise ConfigError(f"calibrate_step_model: shared_cores must be >= 1 or None, got {shared_cores}")
    plans = [plan for plan, _ in observations]
    measured = np.array([seconds for _, seconds in observations])
    bare = np.array([repriced_step_s(plan, profile, hardware, 1.0, _NO_COST) for plan in plans])
    comm = np.array([repriced_step_s(plan, profile, hardware, 1.0, 1.0) for plan in plans]) - bare
    if shared_cores is not None:
        work = np.array([worker_work(plan, profile, hardware) for plan in plans])
        # Rows per branch of the max: coefficients of compute_scale and step_overhead_s, constant.
        critical = np.column_stack([bare, np.ones(len(plans)), comm])
        machine = np.column_stack([work / shared_cores, np.zeros(len(plans))])
        scale, overhead = _fit_branches(critical, machine, measured)
        return StepCalibration(compute_scale=scale, step_overhead_s=overhead, shared_cores=shared_cores)
    (scale, inverse_bandwidth), *_ = np.linalg.lstsq(np.column_stack([bare, comm]), measured, rcond=None)
    if len({round(c, 12) for c in bare}) < 2 or inverse_bandwidth <= 0 or scale <= 0:
        inverse_bandwidth = 1.0
        scale = float(np.dot(bare, measured - comm) / np.dot(bare, bare))
    return StepCalibration(compute_scale=float(scale), bandwidth_scale=float(1.0 / inverse_bandwidth))


def _fit_branches(critical: np.ndarray, machine: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """``(scale, overhead)`` fitted with each row on the branch of the max its fit puts it on."""
    on_machine = np.ones(len(measured), dtype=bool)
    # NOTE: every pass moves rows between two branches; a few passes settle, a bounded loop
    # guarantees the fit ends even if two assignments alternate.
    for _ in range(len(measured) + 1):
        rows = np.where(on_machine[:, None], machine, critical)
        scale, overhead = _nonnegative_fit(rows[:, :2], measured - rows[:, 2])
        constants = np.array([scale, overhead, 1.0])
        branch = machine @ constants >= critical @ constants
        if np.array_equal(branch, on_machine):
            break
        on_machine = branch
    return float(scale), float(overhead)


def _nonnegative_fit(columns: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least squares of two non-negative constants: a negative CPU time is not physical."""
    solution, *_ = np.linalg.lstsq(columns, target, rcond=None)
    if (solution >= 0).all():
        return float(solution[0]), float(solution[1])
    # NOTE: the constrained optimum then lies on an axis: fit each constant alone, keep the better.
    candidates = []
    for index in (0, 1):
        column = columns[:, index]
        value = max(0.0, float(np.dot(column, target) / np.dot(column, column)))
        residual = float(np.sum((target - value * column) ** 2))
        candidates.append((residual, index, value))
    _, index, value = min(candidates)
    return (value, 0.0) if index == 0 else (0.0, value)


def step_observations(runs: Sequence[RecordedRun], planner: Planner) -> list[tuple[Plan, float]]:
    """Each calibration run's plans before and after its first loss, with their measured step times.

    Args:
        runs: Calibration runs, each with one failure and steady steps on both sides of it.
        planner: The job's planner (reproduces the plans the runtime executed).

    Returns:
        ``(plan, median steady step seconds)`` pairs, two per run, for :func:`calibrate_step_model`.
    """
    observations = []
    for run in runs:
        before = planner.plan(run.initial_nodes)
        after = planner.reconfigure(before, lost_nodes=run.failures[0].lost).plan
        observations.append((before, steady_step_s(run, generation=0)))
        observations.append((after, steady_step_s(run, generation=run.failures[0].generation)))
    return observations


def held_out_step_errors(
    runs: Mapping[str, RecordedRun], planner: Planner, *, shared_cores: int | None = None
) -> list[PredictionError]:
    """Each run's steady step times, predicted with step constants fitted on the other runs only.

    Shows whether the step-time constants carry from run to run: one held-out error says little
    on a machine whose load changes between runs.

    Args:
        runs: At least two recorded runs with a failure, by name (kept in this order).
        planner: The job's planner.
        shared_cores: As for :func:`calibrate_step_model`.

    Returns:
        ``"<name> before"`` and ``"<name> after"`` for every run.

    Raises:
        ConfigError: fewer than two runs.
    """
    if len(runs) < 2:
        raise ConfigError(f"held_out_step_errors: give at least two runs to hold one out, got {len(runs)}")
    profile, hardware = planner.profile, planner.hardware
    errors = []
    for name, run in runs.items():
        others = step_observations([other for key, other in runs.items() if key != name], planner)
        steps = calibrate_step_model(others, profile, hardware, shared_cores=shared_cores)
        own = step_observations([run], planner)
        for (plan, measured), side in zip(own, ("before", "after"), strict=True):
            predicted = steps.step_s(plan, profile, hardware)
            errors.append(PredictionError(name=f"{name} {side}", predicted_s=predicted, measured_s=measured))
    return errors


def calibration_summary(constants: RecoveryConstants, steps: StepCalibration) -> str:
    """The calibrated cost-model constants, one per line, next to their documented defaults.

    Args:
        constants: From :func:`calibrate_constants`.
        steps: From :func:`calibrate_step_model`.

    Returns:
        Printable text.
    """
    default = RecoveryConstants()
    rows = [
        ("disconnect_detect_s", constants.disconnect_detect_s, default.disconnect_detect_s),
        ("plan_s", constants.plan_s, default.plan_s),
        ("rebuild_groups_fixed_s", constants.rebuild_groups_fixed_s, default.rebuild_groups_fixed_s),
        (
            "rebuild_groups_per_group_s",
            constants.rebuild_groups_per_group_s,
            default.rebuild_groups_per_group_s,
        ),
        ("compute_scale", steps.compute_scale, 1.0),
        ("bandwidth_scale", steps.bandwidth_scale, 1.0),
        ("step_overhead_s", steps.step_overhead_s, 0.0),
        ("shared_cores", steps.shared_cores or 0, 0),
    ]
    return "\n".join(f"{name:<28} {value:>10.4g}   (default {fallback:g})" for name, value, fallback in rows)


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
    steps: StepCalibration | None = None,
) -> RunPrediction:
    """Plan the run's nodes, reconfigure after its first loss, and predict the phases and step times.

    Args:
        run: A recorded run with a failure.
        planner: The job's planner (same profile, hardware, f and batch as the runtime used), so
            the plans are the ones the runtime executed.
        constants: Recovery constants (e.g. from :func:`calibrate_constants` on other runs).
        steps: Step-time calibration (from :func:`calibrate_step_model` on other runs); ``None``
            prices steps with the profile and hardware spec as they are.

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
    steps = steps or StepCalibration(compute_scale=1.0, bandwidth_scale=1.0)
    before = steps.step_s(plan, planner.profile, planner.hardware)
    after = steps.step_s(change.plan, planner.profile, planner.hardware)
    phases = planner.predict_recovery(change, constants).to_dict()
    phases["total"] += after - phases["first_step"]
    phases["first_step"] = after
    return RunPrediction(
        plan=plan, new_plan=change.plan, phases_s=phases, step_before_s=before, step_after_s=after
    )


def simulate_run(
    run: RecordedRun,
    profile: ModelProfile,
    planner: Planner,
    constants: RecoveryConstants,
    steps: StepCalibration | None = None,
) -> SimulationResult:
    """Replay the run's failures in the simulator, with the oobleck policy only.

    Writes ``<run_dir>/trace.csv`` (the same nodes removed at the same time after the first step
    started) and ``<run_dir>/simulated-profile.json``; the simulated duration ends with the run's
    last step. The simulator takes a catalogue hardware *name*, so a bandwidth calibration cannot
    reach it: instead the profile's compute times are scaled so that the simulator's step time of
    the run's initial plan equals the calibrated model's. That is exact before the failure only:
    the simulator prices nodes as separate machines, so with ``steps.shared_cores`` its step after
    a loss grows with the survivors' microbatches where the calibrated model's shrinks.

    Args:
        run: A recorded run with a failure.
        profile: The profile the runtime planned with.
        planner: The job's planner (supplies hardware, f and the batch).
        constants: Recovery constants the simulator charges.
        steps: Step-time calibration (``None``: the profile as measured).

    Returns:
        The simulation result.
    """
    folder = Path(run.run_dir)
    (folder / "trace.csv").write_text(failure_trace(run))
    scale = 1.0
    if steps is not None:
        plan = planner.plan(run.initial_nodes)
        compute = repriced_step_s(plan, profile, planner.hardware, 1.0, _NO_COST)
        comm = repriced_step_s(plan, profile, planner.hardware, 1.0, 1.0) - compute
        scale = (steps.step_s(plan, profile, planner.hardware) - comm) / compute
    scaled = scaled_profile(profile, scale)
    scaled.save(folder / "simulated-profile.json")
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
        costs=SimCosts(recovery=constants),
    )
    return simulate(config)
