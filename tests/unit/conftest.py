"""Fixtures shared by the unit tests of more than one package."""

from __future__ import annotations

import pytest

from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner


@pytest.fixture(scope="session")
def tiny_planner() -> Planner:
    """The local test job's planner: tiny GPT-2 on ``cpu`` nodes, f=1, 8 microbatches of 2, <= 4 nodes.

    Its plans are those of ``examples/tiny_gpt2.yaml`` with ``fault_tolerance: 1`` (as the demo and
    notebook 03 run it) on ``examples/hosts.local4``: four one-node pipelines, three after a loss.
    """
    hardware = get_hardware("cpu")
    profile = analytic_profile("tiny-gpt2", hardware, microbatch_size=2)
    return Planner(
        profile, hardware, fault_tolerance=1, global_microbatches=8, microbatch_size=2, max_nodes=4
    )
