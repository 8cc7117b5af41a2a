"""A real Master and a real Agent: slots that do not match the job's devices per node end both at once."""

from __future__ import annotations

import logging
import time

import pytest

from oobleck.runtime.control.agent import Agent, AgentConfig
from oobleck.runtime.control.jobspec import JobSpec
from tests.unit.runtime.control_setup import TOKEN

JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 2\nhardware: {hardware}\n{extra}"


@pytest.mark.parametrize(
    ("hardware", "extra", "expected"),
    [
        ("h100", "", "hardware 'h100' has gpus_per_node=8"),
        ("cpu", "gpus_per_node: 4\n", "the job's gpus_per_node=4"),
    ],
)
def test_mismatched_agent_exits_2_and_the_job_fails_at_once(
    master, tmp_path, caplog, hardware, extra, expected
):
    """A 2-slot agent for an 8-GPU entry (or a 4-device override) exits 2 and the job fails at once."""
    caplog.set_level(logging.ERROR)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB.format(hardware=hardware, extra=extra))
    master.submit(JobSpec.from_path(job_file), expected_agents=2)
    agent = Agent(AgentConfig(master_host="127.0.0.1", master_port=master.server.port, slots=2), TOKEN)
    start = time.monotonic()
    assert agent.run() == 2
    assert master.wait(timeout_s=5.0) == "failed"
    assert time.monotonic() - start < 5.0
    refusals = [r.getMessage() for r in caplog.records if "master refused this agent" in r.getMessage()]
    assert len(refusals) == 1 and expected in refusals[0] and "\n" not in refusals[0]
    assert agent.workers == []


def test_matching_slots_are_welcomed(master, tmp_path):
    """A 2-slot agent joins a cpu job (2-device nodes) without refusal."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB.format(hardware="cpu", extra=""))
    master.submit(JobSpec.from_path(job_file), expected_agents=2)
    agent = Agent(AgentConfig(master_host="127.0.0.1", master_port=master.server.port, slots=2), TOKEN)
    channel = agent._connect(5.0)
    try:
        assert agent._register(channel)["type"] == "welcome"
    finally:
        channel.close()
    assert master.machine.outcome is None
