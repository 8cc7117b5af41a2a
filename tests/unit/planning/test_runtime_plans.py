"""The runtime's test jobs plan onto every node: the runtime does not run spare nodes yet."""

from __future__ import annotations

import pytest
import yaml

from oobleck.runtime.config import job_config_from_dict
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.standalone import job_planner, job_profile

# NOTE: the adapters import the GPT-2 model code lazily; importing it here keeps that (seconds)
# out of the test time.
pytest.importorskip("transformers.models.gpt2.modeling_gpt2")

JOB = """\
model: tiny-gpt2
data:
  source: pydoc
  sequence_length: 32
global_batch: 16
microbatch_size: 2
steps: 4
fault_tolerance: {f}
hardware: cpu
profile: analytic
"""


@pytest.mark.parametrize(("nodes", "fault_tolerance"), [(4, 1), (6, 1), (4, 2), (6, 2)])
def test_runtime_test_jobs_use_every_node(nodes: int, fault_tolerance: int) -> None:
    """The runtime's own planning of its test jobs (tiny GPT-2, batch 16, microbatch 2) leaves no spare.

    NOTE: the runtime does not run spare nodes yet; if this fails, a runtime test would train on
    fewer nodes than it started.
    """
    job = job_config_from_dict(yaml.safe_load(JOB.format(f=fault_tolerance)))
    profile = job_profile(job, build_adapter(job.model))
    plan = job_planner(job, profile, nodes).plan(tuple(range(nodes)))
    assert plan.spare_nodes == ()
    assert plan.pipeline_nodes == tuple(range(nodes))
