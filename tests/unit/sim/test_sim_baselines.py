"""Each baseline's own mechanism decides one scenario, as its paper describes it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from oobleck.sim import SimCosts, SimulationConfig, SimulationResult, simulate
from oobleck.sim.costs import checkpoint_bytes, checkpoint_save_s, daly_goodput, daly_interval_s


def _run(config: SimulationConfig, tmp_path: Path, trace: str, *policies: str) -> SimulationResult:
    path = tmp_path / "trace.csv"
    path.write_text(trace)
    return simulate(dataclasses.replace(config, trace=str(path), policies=policies))


def _rate_at(result: SimulationResult, policy: str, time_s: float) -> float:
    """Training throughput of ``policy`` at ``time_s`` (its timeline is a step function)."""
    rate = 0.0
    for point in result.result(policy).timeline:
        if point.time_s > time_s:
            break
        rate = point.samples_per_s
    return rate


def test_varuna_reshapes_onto_a_non_divisible_node_count_and_checkpoints_at_once(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """16 nodes run 2-node pipelines; after one loss varuna morphs onto all 15 (3-node pipelines)
    and writes a checkpoint right after the restart, while the fixed-size checkpoint job waits."""
    result = _run(small_config, tmp_path, "3600000,remove,node0\n", "varuna", "checkpoint")
    varuna = result.result("varuna")
    assert varuna.timeline[0].min_pipeline_nodes == 2
    assert (varuna.timeline[-1].nodes_used, varuna.timeline[-1].min_pipeline_nodes) == (15, 3)
    # NOTE: fail_rate 0 configures no failures, so the only checkpoint is the one after the restart.
    assert varuna.breakdown_s["checkpoint"] > 0
    checkpoint = result.result("checkpoint")
    assert checkpoint.recoveries == {"wait": 1}
    assert checkpoint.breakdown_s["down"] == pytest.approx(3 * 3600.0)


def test_varuna_ranks_shapes_by_expected_goodput_not_step_time() -> None:
    """Daly's goodput charges restart and checkpoint time at the interrupt rate: more nodes that fail
    more often can lose to fewer, and a free, failure-free shape keeps everything."""
    assert daly_goodput(math.inf, 10.0, 120.0, math.inf) == 1.0
    tau = daly_interval_s(60.0, 3600.0)
    slow_restart = daly_goodput(tau, 60.0, 600.0, 3600.0)
    fast_restart = daly_goodput(tau, 60.0, 60.0, 3600.0)
    assert 0 < slow_restart < fast_restart < 1


def test_checkpoint_period_is_dalys_for_the_configured_mtbf_not_the_trace(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Replaying the same trace, checkpoint writes as many checkpoints as Daly's period for the
    configured failure rate implies, and a different configured rate changes that count."""
    counts = []
    for rate in (0.01, 0.1):
        # NOTE: a100 nodes make a step (~0.1 s) short against the period, so boundaries hardly matter.
        config = dataclasses.replace(small_config, nodes=17, fail_rate=rate, hardware="a100-40")
        result = _run(config, tmp_path, "14000000,remove,node16\n", "checkpoint")
        row = result.result("checkpoint")
        used = row.timeline[0].nodes_used
        save_s = checkpoint_save_s(checkpoint_bytes(result.profile), config.costs, used)
        tau = daly_interval_s(save_s, 3600.0 / (used * rate))
        written = round(row.breakdown_s["checkpoint"] / save_s)
        step_s = config.global_microbatches / row.steady_samples_per_s
        # Each checkpoint waits for the step boundary after tau of training.
        assert math.floor(4 * 3600.0 / (tau + save_s + step_s)) <= written <= math.ceil(4 * 3600.0 / tau)
        counts.append(written)
    assert counts[1] > counts[0]


def test_async_checkpoints_stop_training_only_for_their_overhead(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """With checkpoint_async_overhead_s, each checkpoint costs exactly that overhead."""
    costs = SimCosts(checkpoint_interval_s=1800.0, checkpoint_async_overhead_s=2.0)
    config = dataclasses.replace(small_config, costs=costs)
    row = _run(config, tmp_path, "14000000,remove,node3\n", "checkpoint").result("checkpoint")
    assert row.breakdown_s["checkpoint"] == pytest.approx(2.0 * round(row.breakdown_s["checkpoint"] / 2.0))
    assert 6 <= row.breakdown_s["checkpoint"] / 2.0 <= 7


def test_bamboo_runs_degraded_after_a_failover_until_a_join_reconfigures_it(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """After a failover bamboo trains slower on the same pipelines; the node's return is taken by a
    reconfiguration that pauses for a restart (joins are not free) and restores the first rate."""
    result = _run(small_config, tmp_path, "3600000,remove,node1\n5400000,add,node1\n", "bamboo")
    row = result.result("bamboo")
    before, degraded = _rate_at(result, "bamboo", 3599.0), _rate_at(result, "bamboo", 5000.0)
    assert 0 < degraded < before
    assert row.recoveries == {"failover": 1, "reconfigure": 1}
    assert row.breakdown_s["recovery"] == pytest.approx(
        small_config.costs.bamboo_failover_s + small_config.costs.recovery.restart_s
    )
    assert _rate_at(result, "bamboo", 4 * 3600.0 - 1) == pytest.approx(before)


def test_oobleck_credits_the_first_step_and_charges_only_its_warm_up(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """A warm-up constant of 5 s lengthens oobleck's outage by exactly 5 s; the step itself trains."""
    trace = "3600000,remove,node3\n"
    plain = _run(small_config, tmp_path, trace, "oobleck").result("oobleck")
    warm = dataclasses.replace(small_config, costs=SimCosts(first_step_warmup_s=5.0))
    slow = _run(warm, tmp_path, trace, "oobleck").result("oobleck")
    assert slow.recovery_durations_s[0] == pytest.approx(plain.recovery_durations_s[0] + 5.0)
    step_s = small_config.global_microbatches / plain.steady_samples_per_s
    assert plain.recovery_durations_s[0] < step_s


def test_rack_failure_scenario_oobleck_reconfigures_and_beats_checkpoint_restart() -> None:
    """--rack-size 8 --rack-fail-rate 0.01 --hours 72 --seed 3: every loss, whole racks included, is
    reconfigured in place, and oobleck trains at least as much as checkpoint-restart."""
    config = SimulationConfig(
        rack_size=8, rack_fail_rate=0.01, hours=72.0, seed=3, policies=("oobleck", "checkpoint")
    )
    result = simulate(config)
    # NOTE: a rack takes down every node of it still up: here 4 and then 7 nodes at once, far above f=1.
    assert max(len(event.lost) for event in result.trace.events) == 7
    oobleck, checkpoint = result.result("oobleck"), result.result("checkpoint")
    assert set(oobleck.recoveries) == {"reconfigure"}
    assert oobleck.samples >= checkpoint.samples


def test_bamboo_failovers_in_two_pipelines_do_not_compound(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """A second failover in another pipeline leaves bamboo's degraded step where the first put it:
    every pipeline waits for the slowest one at the all-reduce, slowdowns do not multiply."""
    trace = "3600000,remove,node1\n5400000,remove,node5\n"
    result = _run(small_config, tmp_path, trace, "bamboo")
    assert result.result("bamboo").recoveries == {"failover": 2}
    before = _rate_at(result, "bamboo", 3599.0)
    one, two = _rate_at(result, "bamboo", 5000.0), _rate_at(result, "bamboo", 6000.0)
    assert 0 < one < before
    assert two == pytest.approx(one, rel=1e-12)
