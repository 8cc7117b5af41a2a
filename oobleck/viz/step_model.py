"""Fit the planning core's step-time constants to recorded runs, and test whether they carry over.

:class:`~oobleck.planning.step_time.StepConstants` maps the cost model onto a running job (compute
and bandwidth scales, a per-worker overhead, shared cores); the simulator and the recovery
prediction charge steps with them. :func:`calibrate_step_model` fits them to measured steps,
:func:`held_out_step_errors` tests whether they carry from one run to another. Recovery constants
and whole-run predictions live in :mod:`oobleck.viz.prediction`.

Assumptions:
    * The planner given here is the job's (same profile, hardware, f and batch), so it reproduces
      the plans the runtime executed before and after each loss.
    * Calibration runs and the run being predicted are different runs of the same job on the same
      machine: constants are fitted on the first and tested on the second, never on the run itself.
    * The step-time constants of a shared machine are told apart by plans with different numbers
      of workers: calibration runs should cover more than two.
    * Steady steps of one plan take about the same time, so one median per plan and run stands for
      all of them (:func:`~oobleck.viz.recovery.steady_step_s`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.planning.step_time import StepConstants, step_parts_s, worker_work
from oobleck.viz.recovery import PredictionError, steady_step_s
from oobleck.viz.runs import RecordedRun


def calibrate_step_model(
    observations: Sequence[tuple[Plan, float]],
    profile: ModelProfile,
    hardware: HardwareSpec,
    *,
    shared_cores: int | None = None,
) -> StepConstants:
    """Least-squares fit of the step constants to measured steady step times.

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
        The fitted step constants.

    Raises:
        ConfigError: no observations, or ``shared_cores`` below 1.
    """
    if not observations:
        raise ConfigError("calibrate_step_model: give at least one (plan, measured step time) pair")
    if shared_cores is not None and shared_cores < 1:
        raise ConfigError(f"calibrate_step_model: shared_cores must be >= 1 or None, got {shared_cores}")
    plans = [plan for plan, _ in observations]
    measured = np.array([seconds for _, seconds in observations])
    parts = np.array([step_parts_s(plan, profile, hardware) for plan in plans])
    bare, comm = parts[:, 0], parts[:, 1]
    if shared_cores is not None:
        work = np.array([worker_work(plan, profile, hardware) for plan in plans])
        # Rows per branch of the max: coefficients of compute_scale and step_overhead_s, constant.
        critical = np.column_stack([bare, np.ones(len(plans)), comm])
        machine = np.column_stack([work / shared_cores, np.zeros(len(plans))])
        scale, overhead = _fit_branches(critical, machine, measured)
        return StepConstants(compute_scale=scale, step_overhead_s=overhead, shared_cores=shared_cores)
    (scale, inverse_bandwidth), *_ = np.linalg.lstsq(np.column_stack([bare, comm]), measured, rcond=None)
    if len({round(c, 12) for c in bare}) < 2 or inverse_bandwidth <= 0 or scale <= 0:
        inverse_bandwidth = 1.0
        # NOTE: steps measured shorter than the modelled communication would ask for a negative
        # compute time; a CPU time is not negative, so the fit stops at 0 as on shared cores.
        scale = max(0.0, float(np.dot(bare, measured - comm) / np.dot(bare, bare)))
    return StepConstants(compute_scale=float(scale), bandwidth_scale=float(1.0 / inverse_bandwidth))


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
