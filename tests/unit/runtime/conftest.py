"""Fixtures of the in-process control-plane tests: a real master on loopback and a tiny job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.master_config import MasterConfig
from tests.unit.runtime.control_setup import TINY_JOB, TOKEN


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    """A master with fast heartbeats in ``tmp_path/run``, closed after the test."""
    m = Master(MasterConfig(run_dir=tmp_path / "run", heartbeat_interval_s=0.2), TOKEN)
    yield m
    m.close()


@pytest.fixture
def job(tmp_path: Path) -> JobSpec:
    """:data:`TINY_JOB` as a submitted job spec."""
    path = tmp_path / "job.yaml"
    path.write_text(TINY_JOB)
    return JobSpec.from_path(path)
