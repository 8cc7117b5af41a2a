"""Invariants of every simulated run, checked on random failure traces (hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oobleck.sim import SimulationConfig, simulate
from oobleck.sim.metrics import BREAKDOWN_KEYS

_CONFIG = SimulationConfig(
    nodes=12, hours=12.0, model="gpt2-medium", hardware="a100-40", global_microbatches=48, fault_tolerance=1
)


# NOTE: derandomized, so CI runs the same examples every time (no unseeded randomness).
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    fail_rate=st.floats(min_value=0.0, max_value=0.3),
    repair_hours=st.one_of(st.none(), st.floats(min_value=0.01, max_value=6.0)),
    rack_size=st.sampled_from([0, 3, 4]),
)
def test_every_run_partitions_time_and_never_trains_on_a_dead_node(
    seed: int, fail_rate: float, repair_hours: float | None, rack_size: int
) -> None:
    """For any seeded trace, each policy's breakdown sums to the horizon, nothing is negative, and
    it never uses more nodes than are up."""
    config = dataclasses.replace(
        _CONFIG,
        seed=seed,
        fail_rate=fail_rate,
        repair_hours=repair_hours,
        rack_size=rack_size,
        rack_fail_rate=0.05 if rack_size else 0.0,
    )
    result = simulate(config)
    for row in result.results:
        if not row.feasible:
            continue
        assert sum(row.breakdown_s[key] for key in BREAKDOWN_KEYS) == pytest.approx(12 * 3600.0)
        assert min(row.breakdown_s.values()) >= -1e-6
        assert row.samples >= -1e-6
        for point in row.timeline:
            assert point.nodes_used <= point.nodes_up
            assert point.samples >= -1e-6
