"""Tests of the step-time constants: repricing a plan, shared cores, and the ``--costs`` keys."""

from __future__ import annotations

import dataclasses

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.planning.step_time import (
    StepConstants,
    repriced_step_s,
    scaled_profile,
    step_parts_s,
    worker_work,
)

HARDWARE = get_hardware("cpu")
PROFILE = analytic_profile("tiny-gpt2", HARDWARE, microbatch_size=2)


def test_default_constants_charge_exactly_the_planned_step_time(tiny_planner: Planner) -> None:
    """Uncalibrated, a step costs what the planner priced it at, and repricing agrees to the last bit."""
    for nodes in (4, 3, 2):
        plan = tiny_planner.plan(range(nodes))
        assert StepConstants().step_s(plan, PROFILE, HARDWARE) == plan.iteration_time_s
        assert repriced_step_s(plan, PROFILE, HARDWARE, 1.0, 1.0) == plan.iteration_time_s


def test_repricing_at_unit_scales_reproduces_the_planned_step_time(tiny_planner: Planner) -> None:
    """Scales of 1 give back the planner's own step time; doubling compute doubles the compute part."""
    plan = tiny_planner.plan(range(4))
    assert repriced_step_s(plan, PROFILE, HARDWARE, 1.0, 1.0) == pytest.approx(plan.iteration_time_s)
    compute, comm = step_parts_s(plan, PROFILE, HARDWARE)
    assert compute > 0 and comm > 0
    assert compute + comm == pytest.approx(plan.iteration_time_s)
    assert repriced_step_s(plan, PROFILE, HARDWARE, 2.0, 1e12) == pytest.approx(2 * compute)


def test_scaled_profile_changes_compute_times_only() -> None:
    """Every layer's forward and backward time is multiplied by the scale; sizes and names stay."""
    scaled = scaled_profile(PROFILE, 2.5)
    assert len(scaled.layers) == len(PROFILE.layers)
    for layer, new in zip(PROFILE.layers, scaled.layers, strict=True):
        assert (new.forward_s, new.backward_s) == (2.5 * layer.forward_s, 2.5 * layer.backward_s)
        assert dataclasses.replace(new, forward_s=layer.forward_s, backward_s=layer.backward_s) == layer


def test_separate_machines_step_is_the_repriced_formula_plus_overhead(tiny_planner: Planner) -> None:
    """Without shared cores a step is the 1F1B formula under the scales, plus the per-step overhead."""
    plan = tiny_planner.plan(range(3))
    steps = StepConstants(compute_scale=0.3, bandwidth_scale=0.05, step_overhead_s=0.002)
    expected = repriced_step_s(plan, PROFILE, HARDWARE, 0.3, 0.05) + 0.002
    assert steps.step_s(plan, PROFILE, HARDWARE) == pytest.approx(expected)


def test_shared_cores_step_is_the_machines_work_over_its_cores(tiny_planner: Planner) -> None:
    """Four one-node pipelines of 2 microbatches on 2 cores take 4c + 2o; after a loss 4c + 1.5o, faster."""
    steps = StepConstants(compute_scale=0.5, step_overhead_s=0.004, shared_cores=2)
    before, after = tiny_planner.plan(range(4)), tiny_planner.plan(range(3))
    compute, workers = worker_work(before, PROFILE, HARDWARE)
    assert (workers, worker_work(after, PROFILE, HARDWARE)) == (4, (pytest.approx(compute), 3))
    per_microbatch = 0.5 * compute / 8
    assert steps.step_s(before, PROFILE, HARDWARE) == pytest.approx(4 * per_microbatch + 2 * 0.004)
    assert steps.step_s(after, PROFILE, HARDWARE) == pytest.approx(4 * per_microbatch + 1.5 * 0.004)
    separate = StepConstants(compute_scale=0.5, step_overhead_s=0.004)
    assert separate.step_s(after, PROFILE, HARDWARE) > separate.step_s(before, PROFILE, HARDWARE)


def test_first_step_of_a_predicted_recovery_is_priced_by_the_step_constants(tiny_planner: Planner) -> None:
    """The recovery prediction charges the calibrated step, not the profile's, for the first step."""
    change = tiny_planner.reconfigure(tiny_planner.plan(range(4)), lost_nodes=(3,))
    steps = StepConstants(compute_scale=0.5, step_overhead_s=0.004, shared_cores=2)
    assert tiny_planner.predict_recovery(change).first_step_s == change.plan.iteration_time_s
    calibrated = tiny_planner.predict_recovery(change, steps=steps)
    assert calibrated.first_step_s == steps.step_s(change.plan, PROFILE, HARDWARE)


def test_constants_round_trip_through_a_mapping_and_bad_values_name_the_key() -> None:
    """``to_dict``/``from_dict`` round-trip; an unknown key or an out-of-range value is one clear error."""
    steps = StepConstants(compute_scale=0.5, step_overhead_s=0.01, shared_cores=2)
    assert StepConstants.from_dict(steps.to_dict()) == steps
    assert StepConstants.from_dict({}) == StepConstants()
    with pytest.raises(ConfigError, match="compute_scal"):
        StepConstants.from_dict({"compute_scal": 1.0}, source="costs.json")
    with pytest.raises(ConfigError, match=r"costs.json: bandwidth_scale must be > 0"):
        StepConstants.from_dict({"bandwidth_scale": 0}, source="costs.json")
    with pytest.raises(ConfigError, match="shared_cores must be an integer >= 1 or null"):
        StepConstants(shared_cores=0)
    with pytest.raises(ConfigError, match="step_overhead_s must be >= 0"):
        StepConstants(step_overhead_s=-0.1)
