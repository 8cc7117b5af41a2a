"""The simulated job's clock: what each policy loses, pays and does at exact trace times."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oobleck.sim import PolicyResult, SimulationConfig, SimulationResult, simulate
from oobleck.sim.costs import checkpoint_bytes, checkpoint_save_s, young_daly_interval_s


def _run(config: SimulationConfig, tmp_path: Path, trace: str, *policies: str) -> SimulationResult:
    path = tmp_path / "trace.csv"
    path.write_text(trace)
    return simulate(dataclasses.replace(config, trace=str(path), policies=policies))


def _states(result: SimulationResult, policy: str) -> list[tuple[float, bool, int]]:
    """(time, training?, nodes up) at every change of the policy's timeline."""
    return [(p.time_s, p.samples_per_s > 0, p.nodes_up) for p in result.result(policy).timeline]


def _writers(row: PolicyResult) -> int:
    """Nodes per pipeline of the first configuration: they write a checkpoint in parallel."""
    return row.timeline[0].min_pipeline_nodes


def test_oobleck_loses_only_the_step_in_flight(small_config: SimulationConfig, tmp_path: Path) -> None:
    """One loss mid-step costs oobleck exactly the elapsed part of that step, then one reconfiguration."""
    result = _run(small_config, tmp_path, "1000370,remove,node3\n", "oobleck")
    row = result.result("oobleck")
    step_s = result.config.global_microbatches / row.steady_samples_per_s
    assert row.recoveries == {"reconfigure": 1}
    assert row.breakdown_s["lost"] == pytest.approx(1000.37 % step_s)
    assert row.breakdown_s["recovery"] == pytest.approx(row.recovery_durations_s[0])


def test_checkpoint_restart_timeline_at_exact_times(small_config: SimulationConfig, tmp_path: Path) -> None:
    """checkpoint stops at the failure, restarts for the restart cost, then trains on one node fewer."""
    result = _run(small_config, tmp_path, "3600000,remove,node0\n", "checkpoint")
    row = result.result("checkpoint")
    (outage,) = row.recovery_durations_s
    states = _states(result, "checkpoint")
    assert states[0] == (0.0, True, 16)
    assert (3600.0, False, 15) in states
    assert (pytest.approx(3600.0 + outage), True, 15) in states
    # Work since the last checkpoint is redone: some, but at most one Young/Daly period (+ a step).
    save_s = checkpoint_save_s(checkpoint_bytes(result.profile), small_config.costs, _writers(row))
    tau = young_daly_interval_s(save_s, mtbf_s=4 * 3600.0)
    step_s = result.config.global_microbatches / row.steady_samples_per_s
    assert 0 < row.breakdown_s["lost"] <= tau + step_s


def test_a_failure_during_recovery_extends_one_outage(small_config: SimulationConfig, tmp_path: Path) -> None:
    """A second loss 10 s into a restart counts as a second restart but a single, longer outage."""
    single = _run(small_config, tmp_path, "3600000,remove,node0\n", "checkpoint").result("checkpoint")
    double = _run(small_config, tmp_path, "3600000,remove,node0\n3610000,remove,node1\n", "checkpoint")
    row = double.result("checkpoint")
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
    single = _run(small_config, tmp_path, "3600000,remove,node0\n", "checkpoint").result("checkpoint")
    joined = _run(small_config, tmp_path, "3600000,remove,node0\n3610000,add,node0\n", "checkpoint")
    row = joined.result("checkpoint")
    assert row.recoveries["restart"] == 1
    assert row.recovery_durations_s[0] == pytest.approx(single.recovery_durations_s[0])


def test_oobleck_falls_back_to_a_checkpoint_when_more_than_f_fail_at_once(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """Two simultaneous losses with f=1 make oobleck restart from its checkpoint instead of reconfiguring."""
    result = _run(small_config, tmp_path, "3600000,remove,node0\n3600000,remove,node9\n", "oobleck")
    row = result.result("oobleck")
    assert row.recoveries == {"restart": 1}
    # No checkpoint was written in the first hour (period 6 h), so the whole hour is redone.
    assert row.breakdown_s["lost"] == pytest.approx(3600.0)
    assert row.breakdown_s["checkpoint"] == 0.0
