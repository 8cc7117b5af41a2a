"""Shared small-job settings for the simulator tests: a GPT-2 medium on 16 single-device CPU nodes."""

from __future__ import annotations

import pytest

from oobleck.sim import SimulationConfig


@pytest.fixture
def small_config() -> SimulationConfig:
    """GPT-2 medium on 16 CPU nodes (n0 = 2), B = 64 microbatches, no failures, 4 hours."""
    return SimulationConfig(
        nodes=16,
        fail_rate=0.0,
        hours=4.0,
        model="gpt2-medium",
        hardware="cpu",
        global_microbatches=64,
        fault_tolerance=1,
    )
