"""The simulated job's clock: what each policy loses, pays and does at exact trace times."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oobleck.planning.recovery import RecoveryConstants
from oobleck.sim import SimCosts, SimulationConfig, SimulationResult, simulate
from oobleck.sim.costs import checkpoint_bytes, checkpoint_save_s, daly_interval_s


def _run(config: SimulationConfig, tmp_path: Path, trace: str, *policies: str) -> SimulationResult:
    path = tmp_path / "trace.csv"
    path.write_text(trace)
    return simulate(dataclasses.replace(config, trace=str(path), policies=policies))


def _states(result: SimulationResult, policy: str) -> list[tuple[float, bool, int]]:
    """(time, training?, nodes up) at every change of the policy's timeline."""
    return [(p.time_s, p.samples_per_s > 0, p.nodes_up) for p in result.result(policy).timeline]


def test_oobleck_loses_only_the_step_in_flight(small_config: SimulationConfig, tmp_path: Path) -> None:
    """One loss mid-step costs oobleck exactly the elapsed part of that step, then one reconfiguration."""
    result = _run(small_config, tmp_path, "1000370,remove,node3\n", "oobleck")
    row = result.result("oobleck")
    step_s = result.config.global_microbatches / row.steady_samples_per_s
    assert row.recoveries == {"reconfigure": 1}
    assert row.breakdown_s["lost"] == pytest.approx(1000.37 % step_s)
    assert row.breakdown_s["recovery"] == pytest.approx(row.recovery_durations_s[0])


def test_checkpoint_restart_timeline_at_exact_times(small_config: SimulationConfig, tmp_path: Path) -> None:
    """checkpoint stops at the failure, restarts for the restart cost on its spare, then trains as before."""
    # NOTE: 17 nodes: the fixed-size job runs 8 two-node pipelines, node16 is its spare.
    config = dataclasses.replace(small_config, nodes=17, fail_rate=0.01)
    result = _run(config, tmp_path, "3600000,remove,node0\n", "checkpoint")
    row = result.result("checkpoint")
    (outage,) = row.recovery_durations_s
    states = _states(result, "checkpoint")
    assert states[0] == (0.0, True, 17)
    assert (3600.0, False, 16) in states
    assert (pytest.approx(3600.0 + outage), True, 16) in states
    assert row.timeline[-1].nodes_used == 16
    # Work since the last checkpoint is redone: some, but at most one Daly period (+ a step) of
    # the *configured* MTBF of the 16 nodes in use (0.01 failures/node/h).
    save_s = checkpoint_save_s(checkpoint_bytes(result.profile), config.costs, 16)
    tau = daly_interval_s(save_s, mtbf_s=3600.0 / (16 * 0.01))
    step_s = result.config.global_microbatches / row.steady_samples_per_s
    assert 0 < row.breakdown_s["lost"] <= tau + step_s


def test_checkpoint_without_a_spare_waits_for_the_repaired_node(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """With every node in use, checkpoint is down from the loss until the node returns, then restarts."""
    result = _run(small_config, tmp_path, "3600000,remove,node0\n5400000,add,node0\n", "checkpoint")
    row = result.result("checkpoint")
    assert row.recoveries == {"wait": 1, "restart": 1}
    assert row.breakdown_s["down"] == pytest.approx(1800.0)
    assert _states(result, "checkpoint")[-1][1:] == (True, 16)


def test_a_failure_during_recovery_extends_one_outage(small_config: SimulationConfig, tmp_path: Path) -> None:
    """A second loss 10 s into a restart counts as a second restart but a single, longer outage."""
    single = _run(small_config, tmp_path, "3600000,remove,node0\n", "varuna").result("varuna")
    double = _run(small_config, tmp_path, "3600000,remove,node0\n3610000,remove,node1\n", "varuna")
    row = double.result("varuna")
    assert row.recoveries == {"restart": 2}
    (outage,) = row.recovery_durations_s
    assert outage > single.recovery_durations_s[0] + 9.0


def test_bamboo_fails_over_unless_a_node_and_its_successor_fail(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Losing one node is a fast failover for bamboo; losing a node and its ring successor is a restart."""
    one = _run(small_config, tmp_path, "3600000,remove,node0\n", "bamboo").result("bamboo")
    assert one.recoveries == {"failover": 1}
    assert one.recovery_durations_s == (pytest.approx(small_config.costs.bamboo_failover_s),)
    pair = _run(small_config, tmp_path, "3600000,remove,node0\n3600000,remove,node1\n", "bamboo")
    assert pair.result("bamboo").recoveries == {"restart": 1}


def test_too_few_nodes_go_down_and_resume_when_nodes_return(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Below n0 nodes nothing trains (down time); when nodes rejoin, every policy trains again."""
    lose = "".join(f"3600000,remove,node{k}\n" for k in range(1, 16))
    back = "".join(f"7200000,add,node{k}\n" for k in range(1, 16))
    result = _run(small_config, tmp_path, lose + back, "oobleck", "varuna")
    for policy in ("oobleck", "varuna"):
        row = result.result(policy)
        assert row.breakdown_s["down"] == pytest.approx(3600.0)
        assert _states(result, policy)[-1][1:] == (True, 16)


def test_an_unrelated_event_does_not_restart_a_recovery(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """A node joining 10 s into a restart leaves the outage exactly one restart long."""
    config = dataclasses.replace(small_config, nodes=17)
    single = _run(config, tmp_path, "3600000,remove,node0\n", "checkpoint").result("checkpoint")
    joined = _run(config, tmp_path, "3600000,remove,node0\n3610000,add,node0\n", "checkpoint")
    row = joined.result("checkpoint")
    assert row.recoveries["restart"] == 1
    assert row.recovery_durations_s[0] == pytest.approx(single.recovery_durations_s[0])


def test_oobleck_reconfigures_beyond_f_and_restarts_only_without_a_valid_plan(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Two simultaneous losses with f=1 are reconfigured in place when reconfigure has a plan; a loss
    that leaves reconfigure no valid plan (one node, below n0=2) restarts from the checkpoint."""
    result = _run(small_config, tmp_path, "3600000,remove,node0\n3600000,remove,node9\n", "oobleck")
    assert result.result("oobleck").recoveries == {"reconfigure": 1}
    # Down to one node: below n0, neither reconfigure nor a restart can run; when 3 nodes return
    # the job restarts from its checkpoint (none written in the first hour: the hour is redone).
    lose = "".join(f"3600000,remove,node{k}\n" for k in range(1, 16))
    back = "".join(f"7200000,add,node{k}\n" for k in (1, 2, 3))
    row = _run(small_config, tmp_path, lose + back, "oobleck").result("oobleck")
    assert row.recoveries == {"wait": 1, "restart": 1}
    assert row.breakdown_s["lost"] == pytest.approx(3600.0)
    assert row.breakdown_s["checkpoint"] == 0.0


def test_batched_checkpoint_cycles_account_exactly_like_one_phase_each(
    small_config: SimulationConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running whole checkpoint cycles as one phase changes no result: samples, breakdown and
    recoveries equal the phase-by-phase run on failures that strike inside writes and trainings."""
    from oobleck.sim.job import TrainingJob

    config = dataclasses.replace(
        small_config,
        hardware="a100-40",
        policies=("checkpoint", "varuna", "oobleck"),
        fail_rate=0.05,
        repair_hours=0.5,
        hours=12.0,
        seed=5,
        # NOTE: slow writes (minutes) so that many failures strike inside one.
        costs=SimCosts(
            checkpoint_interval_s=300.0,
            fallback_checkpoint_interval_s=400.0,
            recovery=RecoveryConstants(checkpoint_save_bandwidth_bytes_per_s=2e6),
        ),
    )
    batched = simulate(config)
    monkeypatch.setattr(TrainingJob, "batch_cycles", False)
    reference = simulate(config)
    for fast, slow in zip(batched.results, reference.results, strict=True):
        assert fast.recoveries == slow.recoveries
        assert fast.samples == pytest.approx(slow.samples, rel=1e-9)
        for key, value in slow.breakdown_s.items():
            assert fast.breakdown_s[key] == pytest.approx(value, rel=1e-9, abs=1e-6)
    assert sum(batched.result("checkpoint").recoveries.values()) > 10
    assert batched.result("varuna").breakdown_s["checkpoint"] > 0.2 * 12 * 3600.0
