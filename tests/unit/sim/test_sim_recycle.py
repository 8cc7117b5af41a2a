"""The experimental ``recycle`` policy: reroute to data-parallel peers, then regrow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oobleck.sim import SimulationConfig, simulate
from oobleck.sim.policies.experimental import recycle_factory


def test_recycle_loses_nothing_and_regrows_the_idle_survivors(
    small_config: SimulationConfig, tmp_path: Path
) -> None:
    """One loss mid-step: recycle loses no work, pauses less than oobleck, and reuses the idle node."""
    trace = tmp_path / "trace.csv"
    trace.write_text("1000370,remove,node3\n")
    config = dataclasses.replace(small_config, trace=str(trace), policies=("oobleck",))
    result = simulate(config, extra_policies={"recycle": recycle_factory})
    oobleck, recycle = result.result("oobleck"), result.result("recycle")
    assert recycle.recoveries == {"reroute": 1, "grow": 1}
    assert recycle.breakdown_s["lost"] == 0.0
    assert oobleck.breakdown_s["lost"] > 0.0
    assert recycle.recovery_durations_s[0] < oobleck.recovery_durations_s[0]
    assert recycle.timeline[-1].nodes_used == 15
    assert sum(recycle.breakdown_s.values()) == pytest.approx(4 * 3600.0)
