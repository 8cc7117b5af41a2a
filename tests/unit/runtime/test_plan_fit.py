"""The plan-fit verdict and its suggested fixes are the workers' own planning outcome."""

from __future__ import annotations

import dataclasses

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.profile import ModelProfile
from oobleck.runtime.config import JobConfig, ModelConfig
from oobleck.runtime.job_plan import job_profile
from oobleck.runtime.plan_fit import assess, check_fit

#: tiny-gpt2 with 2 MB per device needs 2-node pipelines (n0 = 2), as examples/tiny_gpt2_deep.yaml.
DEEP = JobConfig(
    model=ModelConfig(name="tiny-gpt2", arch="gpt2"),
    global_batch=16,
    microbatch_size=2,
    steps=1,
    fault_tolerance=1,
    device_memory_bytes=2_000_000,
)


def _profile(job: JobConfig) -> ModelProfile:
    profile = job_profile(job)
    assert profile is not None
    return profile


def test_fits_on_f_plus_one_pipelines() -> None:
    """On (f+1)*n0 = 4 nodes the job fits with two 2-stage pipelines."""
    fit = assess(DEEP, _profile(DEEP), 4, 1)
    assert fit.fits and fit.min_nodes == 2 and fit.needed_nodes == 4
    assert fit.plan is not None and [len(p.nodes) for p in fit.plan.pipelines] == [2, 2]
    assert fit.message("job.yaml") == ""


def test_too_few_nodes_suggests_nodes_and_the_least_memory() -> None:
    """On 2 nodes it does not fit; the suggested memory fits there and 1 KiB less does not."""
    fit = assess(DEEP, _profile(DEEP), 2, 1)
    assert not fit.fits and fit.needed_nodes == 4
    memory = fit.suggested_memory_bytes
    assert memory is not None and memory % 1024 == 0
    bigger = dataclasses.replace(DEEP, device_memory_bytes=memory)
    assert assess(bigger, _profile(bigger), 2, 1).fits
    smaller = dataclasses.replace(DEEP, device_memory_bytes=memory - 1024)
    assert not assess(smaller, _profile(smaller), 2, 1).fits
    line = fit.message("job.yaml")
    assert line.startswith("job.yaml: plan: fault_tolerance=1 needs (f+1)*n0 = 4 nodes")
    assert f"use >= 4 nodes or set device_memory_bytes: {memory}" in line


def test_f_beyond_the_nodes_suggests_no_memory() -> None:
    """With f=1 on one node no memory helps (two pipelines need two nodes): only the node count is named."""
    fit = assess(DEEP, _profile(DEEP), 1, 1)
    assert not fit.fits and fit.suggested_memory_bytes is None
    assert "use >= 4 nodes" in fit.message("job.yaml") and "device_memory_bytes" not in fit.message(
        "job.yaml"
    )


def test_model_that_fits_nowhere_suggests_memory() -> None:
    """A device smaller than any layer fits no pipeline: the line says so and names a memory that works."""
    tiny = dataclasses.replace(DEEP, fault_tolerance=0, device_memory_bytes=100_000)
    fit = assess(tiny, _profile(tiny), 2, 1)
    assert fit.min_nodes is None and fit.suggested_memory_bytes is not None
    with pytest.raises(
        ConfigError, match=r"fits on no pipeline of 1-device nodes .* set device_memory_bytes: \d+"
    ):
        check_fit(tiny, _profile(tiny), 2, 1, "job.yaml")
