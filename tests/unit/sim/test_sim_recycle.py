"""The experimental ``recycle`` policy: reroute to data-parallel peers, then regrow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oobleck.sim import SimulationConfig, simulate
from oobleck.sim.policies.experimental import recycle_factory


def test_recycle_keeps_the_healthy_stages_running_and_pauses_less_than_oobleck(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """One loss: recycle keeps the damaged pipeline's 7 healthy nodes training (15 in use), pauses only
    to rebuild groups (less than oobleck), and on the node's return reconfigures onto all 16."""
    trace = tmp_path / "trace.csv"
    trace.write_text("1000370,remove,node3\n7200000,add,node3\n")
    config = dataclasses.replace(small_config, trace=str(trace), policies=("oobleck",))
    result = simulate(config, extra_policies={"recycle": recycle_factory})
    oobleck, recycle = result.result("oobleck"), result.result("recycle")
    assert recycle.recoveries == {"reroute": 1, "grow": 1}
    assert recycle.recovery_durations_s[0] < oobleck.recovery_durations_s[0]
    rerouted = [p for p in recycle.timeline if 1000.37 < p.time_s < 7200.0 and p.samples_per_s > 0]
    assert rerouted and all(p.nodes_used == 15 for p in rerouted)
    assert 0 < rerouted[0].samples_per_s <= recycle.steady_samples_per_s
    assert recycle.timeline[-1].nodes_used == 16
    assert sum(recycle.breakdown_s.values()) == pytest.approx(4 * 3600.0)
