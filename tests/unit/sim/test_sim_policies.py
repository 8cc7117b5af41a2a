"""Acceptance tests of the simulated policies against the planning core's own numbers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from oobleck.planning.batch import distribute_batch
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import get_hardware
from oobleck.planning.plan import Pipeline
from oobleck.planning.planner import Planner
from oobleck.planning.recovery import RecoveryConstants
from oobleck.planning.step_time import StepConstants
from oobleck.sim import SimCosts, SimulationConfig, simulate
from oobleck.sim.costs import checkpoint_bytes, checkpoint_save_s, restart_s
from oobleck.sim.metrics import BREAKDOWN_KEYS


def _planner(config: SimulationConfig) -> Planner:
    hardware = get_hardware(config.hardware)
    profile = resolve_profile(config.model, hardware, microbatch_size=config.microbatch_size)
    return Planner(
        profile,
        hardware,
        fault_tolerance=config.fault_tolerance,
        global_microbatches=config.global_microbatches,
        microbatch_size=config.microbatch_size,
        max_nodes=config.nodes,
    )


def _best_homogeneous_samples_per_s(config: SimulationConfig, planner: Planner) -> float:
    """Independent brute force: the fastest plan of identical pipelines on all nodes."""
    hardware = get_hardware(config.hardware)
    profile = resolve_profile(config.model, hardware)
    best = 0.0
    for template in planner.templates:
        width = min(config.nodes // template.num_nodes, config.global_microbatches // template.num_stages)
        if width < 1:
            continue
        counts = distribute_batch([template] * width, config.global_microbatches)
        pipelines = [
            Pipeline(
                template=template,
                nodes=tuple(range(i * template.num_nodes, (i + 1) * template.num_nodes)),
                microbatches=b,
            )
            for i, b in enumerate(counts)
        ]
        step = plan_iteration_time_s(pipelines, profile, hardware)
        best = max(best, config.global_microbatches * config.microbatch_size / step)
    return best


def test_zero_failures_throughput_equals_the_plan_throughput_exactly(small_config: SimulationConfig) -> None:
    """Without failures oobleck and varuna deliver their plan's throughput, bamboo minus its overhead."""
    result = simulate(small_config)
    planner = _planner(small_config)
    oobleck = result.result("oobleck")
    assert oobleck.throughput_samples_per_s == pytest.approx(
        planner.plan(tuple(range(16))).samples_per_s, rel=1e-12
    )
    homogeneous = _best_homogeneous_samples_per_s(small_config, planner)
    assert result.result("varuna").throughput_samples_per_s == pytest.approx(homogeneous, rel=1e-12)
    profile = result.profile
    forward = sum(layer.forward_s for layer in profile.layers) / sum(
        layer.compute_s for layer in profile.layers
    )
    overhead = forward * (1 - small_config.costs.bamboo_bubble_hidden_fraction)
    bamboo = result.result("bamboo")
    assert bamboo.throughput_samples_per_s == pytest.approx(bamboo.steady_samples_per_s, rel=1e-12)
    assert bamboo.breakdown_s["redundancy"] == pytest.approx(
        small_config.hours * 3600 * overhead / (1 + overhead)
    )
    for row in result.results:
        assert row.failures == 0
        assert row.breakdown_s["useful"] + row.breakdown_s["redundancy"] == pytest.approx(4 * 3600.0)


def test_calibrated_step_constants_are_what_every_policy_is_charged(small_config: SimulationConfig) -> None:
    """Step constants in the costs price every policy's steps; oobleck's steady step is exactly theirs."""
    steps = StepConstants(compute_scale=2.0, step_overhead_s=0.5, shared_cores=4)
    config = dataclasses.replace(small_config, costs=SimCosts(step=steps))
    result = simulate(config)
    planner = _planner(config)
    plan = planner.plan(tuple(range(16)))
    step_s = steps.step_s(plan, planner.profile, planner.hardware)
    assert step_s > plan.iteration_time_s
    oobleck = result.result("oobleck")
    assert oobleck.steady_samples_per_s == pytest.approx(plan.global_batch_size / step_s, rel=1e-12)
    uncalibrated = simulate(dataclasses.replace(config, costs=SimCosts()))
    for row, before in zip(result.results, uncalibrated.results, strict=True):
        assert row.samples < before.samples, row.policy


def test_zero_failures_checkpoint_overhead_is_exactly_the_checkpoints_written(
    small_config: SimulationConfig,
) -> None:
    """With a fixed checkpoint period, samples are the plan rate times the time not spent checkpointing."""
    config = dataclasses.replace(
        small_config, policies=("checkpoint",), costs=SimCosts(checkpoint_interval_s=1800.0)
    )
    row = simulate(config).result("checkpoint")
    assert row.breakdown_s["checkpoint"] > 0
    assert row.samples == pytest.approx(
        row.steady_samples_per_s * (4 * 3600.0 - row.breakdown_s["checkpoint"]), rel=1e-9
    )


def test_simulation_is_deterministic_for_a_seed(small_config: SimulationConfig) -> None:
    """Two runs with the same seed give identical JSON documents; another seed differs."""
    config = dataclasses.replace(small_config, fail_rate=0.05, repair_hours=1.0, seed=3)
    first = simulate(config).to_dict()
    assert first == simulate(config).to_dict()
    assert first != simulate(dataclasses.replace(config, seed=4)).to_dict()


def test_breakdown_partitions_the_simulated_time(small_config: SimulationConfig) -> None:
    """Under failures and repairs every policy's breakdown sums to the duration and nothing is negative."""
    config = dataclasses.replace(small_config, fail_rate=0.05, repair_hours=0.5, hours=24.0, seed=1)
    result = simulate(config)
    assert result.trace.num_failures > 5
    for row in result.results:
        assert row.feasible
        assert sum(row.breakdown_s[key] for key in BREAKDOWN_KEYS) == pytest.approx(24 * 3600.0)
        assert min(row.breakdown_s.values()) >= -1e-6
        assert row.failures == result.trace.num_failures


def test_trace_replay_removes_exactly_the_named_nodes_at_the_named_times(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Every policy sees node 3 leave at 1 h and node 5 at 2 h, and nothing else."""
    trace = tmp_path / "trace.csv"
    trace.write_text("3600000,remove,node3\n7200000,remove,node5\n")
    result = simulate(dataclasses.replace(small_config, trace=str(trace)))
    for row in result.results:
        assert row.failures == 2
        up = {point.time_s: point.nodes_up for point in row.timeline}
        assert up[0.0] == 16
        assert up[3600.0] == 15
        assert up[7200.0] == 14
        assert {point.nodes_up for point in row.timeline} == {16, 15, 14}


def test_oobleck_never_runs_below_n0_nodes_per_pipeline(small_config: SimulationConfig) -> None:
    """Through many failures and repairs, every oobleck pipeline that trains has at least n0 nodes."""
    config = dataclasses.replace(
        small_config, fail_rate=0.08, repair_hours=2.0, hours=72.0, seed=5, policies=("oobleck",)
    )
    result = simulate(config)
    row = result.result("oobleck")
    assert result.min_nodes == 2
    assert sum(row.recoveries.values()) > 5
    training = [point for point in row.timeline if point.samples_per_s > 0]
    assert training
    assert all(point.min_pipeline_nodes >= result.min_nodes for point in training)


def test_checkpoint_lost_work_matches_the_analytic_expectation(small_config: SimulationConfig) -> None:
    """Over a long seeded run with spares, checkpoint loses within 10% of half a period per restart."""
    tau = 900.0
    costs = SimCosts(checkpoint_interval_s=tau, recovery=RecoveryConstants(restart_s=10.0))
    # NOTE: a100 nodes make a step (~0.1 s) negligible against tau: checkpoints wait for a step boundary.
    # 16 microbatches cap the fixed-size job at 16 one-node pipelines, so 8 of 24 nodes are spares.
    config = dataclasses.replace(
        small_config,
        nodes=24,
        global_microbatches=16,
        hardware="a100-40",
        policies=("checkpoint",),
        fail_rate=0.05,
        repair_hours=1.0,
        hours=400.0,
        seed=11,
        costs=costs,
    )
    result = simulate(config)
    row = result.result("checkpoint")
    assert "wait" not in row.recoveries
    restarts = row.recoveries["restart"]
    assert restarts > 200
    plan_nodes = row.timeline[0].nodes_used
    assert plan_nodes == 16
    size = checkpoint_bytes(result.profile)
    save = checkpoint_save_s(size, config.costs, plan_nodes)
    # A failure strikes uniformly in a cycle of tau training + C writing: it loses U*tau, or tau.
    expected_lost = restarts * (tau * tau / 2 + save * tau) / (tau + save)
    assert math.isclose(row.breakdown_s["lost"], expected_lost, rel_tol=0.10)
    # A restart cut short by another failure counts whole in the count but not in the time.
    restart_all = restarts * restart_s(size, config.costs, plan_nodes)
    assert 0.9 * restart_all <= row.breakdown_s["recovery"] <= restart_all * (1 + 1e-9)


def test_bamboo_is_reported_infeasible_when_redundant_layers_do_not_fit(
    small_config: SimulationConfig,
) -> None:
    """On 2 CPU nodes GPT-2 medium fits once but not twice: bamboo is a result row marked infeasible."""
    config = dataclasses.replace(small_config, nodes=2, fault_tolerance=0)
    result = simulate(config)
    bamboo = result.result("bamboo")
    assert not bamboo.feasible
    assert "redundant layers" in bamboo.reason
    assert bamboo.samples == 0
    assert result.result("varuna").feasible
    assert result.to_dict()["results"][3]["feasible"] is False
