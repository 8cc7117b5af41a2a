"""The recovery benchmark's jobs: both parts train without float64 exact accumulation (a fair peer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import recovery
from oobleck.runtime.config import load_job_config


@pytest.mark.parametrize("part", ["a", "b"])
def test_benchmark_jobs_accumulate_in_float32(part: str, tmp_path: Path) -> None:
    """Oobleck's benchmark job sets exact_accumulation off, as torchft's peer trains."""
    job = load_job_config(recovery.write_job(part, tmp_path / f"job-{part}.yaml", steps=22))
    assert job.optim.exact_accumulation is False
    assert job.global_batch == recovery.PARTS[part][1]
