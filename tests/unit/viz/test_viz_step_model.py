"""Tests of fitting the step-time constants to measured steps, and of holding runs out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.planning.step_time import StepConstants, repriced_step_s
from oobleck.viz import step_model
from oobleck.viz.runs import RecordedRun, load_run

HARDWARE = get_hardware("cpu")
PROFILE = analytic_profile("tiny-gpt2", HARDWARE, microbatch_size=2)


def _recorded(run_dir: Path, lost: int, step_s: tuple[float, float]) -> RecordedRun:
    """A run of 4 nodes, as the runtime writes it, that loses ``lost`` after 5 steps of ``step_s[0]``."""
    survivors = [node for node in range(4) if node != lost]
    rows = [
        {"event": "membership", "generation": 0, "members": [0, 1, 2, 3]},
        *({"step": i, "loss": 1.0, "samples": 16, "step_s": step_s[0], "t": 1.0 + i} for i in range(5)),
        {"event": "membership", "generation": 1, "members": survivors, "lost": [lost]},
        *(
            {"step": i, "generation": 1, "loss": 1.0, "samples": 16, "step_s": step_s[1], "t": 1.0 + i}
            for i in range(5, 10)
        ),
    ]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_run(run_dir)


def test_separate_machines_step_is_the_cost_models_formula_and_is_fitted_back(tiny_planner: Planner) -> None:
    """Without shared cores a step is the repriced 1F1B formula, and known factors are fitted back exactly."""
    truth = StepConstants(compute_scale=0.3, bandwidth_scale=0.05)
    plans = [tiny_planner.plan(range(4)), tiny_planner.plan(range(3)), tiny_planner.plan(range(2))]
    assert truth.step_s(plans[0], PROFILE, HARDWARE) == repriced_step_s(
        plans[0], PROFILE, HARDWARE, 0.3, 0.05
    )
    observations = [(plan, truth.step_s(plan, PROFILE, HARDWARE)) for plan in plans]
    fitted = step_model.calibrate_step_model(observations, PROFILE, HARDWARE)
    assert fitted.compute_scale == pytest.approx(0.3)
    assert fitted.bandwidth_scale == pytest.approx(0.05)
    assert (fitted.step_overhead_s, fitted.shared_cores) == (0.0, None)


def test_shared_cores_fit_recovers_known_constants_on_both_branches(tiny_planner: Planner) -> None:
    """Compute scale and per-worker overhead come back exactly, with the 2-node plan on its critical path."""
    truth = StepConstants(compute_scale=0.3, step_overhead_s=0.006, shared_cores=2)
    plans = [tiny_planner.plan(range(4)), tiny_planner.plan(range(3)), tiny_planner.plan(range(2))]
    critical = repriced_step_s(plans[2], PROFILE, HARDWARE, 0.3, 1.0) + 0.006
    assert truth.step_s(plans[2], PROFILE, HARDWARE) == pytest.approx(critical)
    observations = [(plan, truth.step_s(plan, PROFILE, HARDWARE)) for plan in plans]
    fitted = step_model.calibrate_step_model(observations, PROFILE, HARDWARE, shared_cores=2)
    assert fitted.compute_scale == pytest.approx(0.3)
    assert fitted.step_overhead_s == pytest.approx(0.006)
    assert (fitted.bandwidth_scale, fitted.shared_cores) == (1.0, 2)


def test_shared_cores_fit_never_returns_a_negative_constant(tiny_planner: Planner) -> None:
    """Noisy steps that ask for a negative constant get it at 0 and the other one fitted alone."""
    before, after = tiny_planner.plan(range(4)), tiny_planner.plan(range(3))
    slower = step_model.calibrate_step_model(
        [(before, 0.050), (after, 0.070)], PROFILE, HARDWARE, shared_cores=2
    )
    assert slower.step_overhead_s == 0.0
    assert slower.step_s(before, PROFILE, HARDWARE) == pytest.approx(0.060)
    assert slower.step_s(after, PROFILE, HARDWARE) == pytest.approx(0.060)
    faster = step_model.calibrate_step_model(
        [(before, 0.050), (after, 0.030)], PROFILE, HARDWARE, shared_cores=2
    )
    assert faster.compute_scale == 0.0
    assert faster.step_overhead_s == pytest.approx((2 * 0.050 + 1.5 * 0.030) / (2**2 + 1.5**2))
    assert step_model.calibrate_step_model([(before, 1e-6)], PROFILE, HARDWARE).compute_scale == 0.0
    with pytest.raises(ConfigError, match="shared_cores"):
        step_model.calibrate_step_model([(before, 0.05)], PROFILE, HARDWARE, shared_cores=0)


def test_held_out_runs_are_predicted_from_the_other_runs_constants(
    tiny_planner: Planner, tmp_path: Path
) -> None:
    """Recorded runs that lose different nodes, timed by one set of constants, are each predicted exactly."""
    truth = StepConstants(compute_scale=0.2, step_overhead_s=0.01, shared_cores=2)
    runs = {}
    for name, lost in (("a", 3), ("b", 0), ("c", 1)):
        before = tiny_planner.plan(range(4))
        after = tiny_planner.reconfigure(before, lost_nodes=(lost,)).plan
        times = (truth.step_s(before, PROFILE, HARDWARE), truth.step_s(after, PROFILE, HARDWARE))
        runs[name] = _recorded(tmp_path / name, lost, times)
    errors = step_model.held_out_step_errors(runs, tiny_planner, shared_cores=2)
    assert [e.name for e in errors] == ["a before", "a after", "b before", "b after", "c before", "c after"]
    assert [e.relative_error for e in errors] == pytest.approx([0.0] * 6, abs=1e-9)
    with pytest.raises(ConfigError, match="at least two runs"):
        step_model.held_out_step_errors({"a": runs["a"]}, tiny_planner)
