"""Devices per node: the agents' slots against the hardware entry, the override, and each other."""

from __future__ import annotations

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.control.devices import node_devices, required_slots, slots_refusal
from oobleck.runtime.control.membership_events import Finish, Ready, Register, Reject, Submit, Welcome
from oobleck.runtime.control.membership_machine import MembershipMachine

JOB = {"type": "job", "config_path": "job.yaml", "config_text": "steps: 1\n"}


def test_cpu_entry_takes_the_agents_slots():
    """On the cpu entry any slot count is a node of that many devices."""
    assert required_slots("cpu", None) is None
    assert node_devices(2, "cpu", None) == 2
    assert node_devices(1, "cpu", None) == 1


def test_gpu_entry_requires_its_gpus_per_node():
    """A GPU entry (8 GPUs) refuses 2-slot agents with a one-line message naming both fixes."""
    assert required_slots("h100", None) == 8
    assert node_devices(8, "h100", None) == 8
    message = slots_refusal(2, "h100", None)
    assert message is not None and "\n" not in message
    assert "gpus_per_node=8" in message and "slots=8" in message and "gpus_per_node: 2" in message
    with pytest.raises(ConfigError, match="slots=2 but hardware 'h100'"):
        node_devices(2, "h100", None)


def test_override_wins_over_the_entry():
    """A job's gpus_per_node override is what the slots must equal, on GPU and cpu entries alike."""
    assert node_devices(4, "h100", 4) == 4
    assert slots_refusal(8, "h100", 4) is not None
    assert slots_refusal(2, "cpu", 1) is not None
    assert "the job's gpus_per_node=1" in str(slots_refusal(2, "cpu", 1))


def _step(machine: MembershipMachine, event, now: list[float]):
    now[0] += 0.1
    return machine.step(event, now[0], 1000.0 + now[0])


def test_machine_refuses_a_mismatch_and_fails_the_job_at_once():
    """An agent whose slots differ from the hardware entry's is refused and the unstarted job fails now."""
    machine, now = MembershipMachine(), [100.0]
    _step(machine, Submit(JOB, 2, 60.0, hardware="h100"), now)
    out = _step(machine, Register(conn=1, index=0, host="h", pid=1, slots=2), now)
    rejects = [d for d in out if isinstance(d, Reject)]
    finishes = [d for d in out if isinstance(d, Finish)]
    assert len(rejects) == 1 and "gpus_per_node=8" in rejects[0].reason
    assert finishes == [Finish("failed", rejects[0].reason)]
    assert machine.outcome == "failed"


def test_machine_fails_a_job_submitted_to_mismatched_agents():
    """Agents registered before the job with the wrong slots make its submission fail, not wait."""
    machine, now = MembershipMachine(), [100.0]
    _step(machine, Register(conn=1, index=0, host="h", pid=1, slots=2), now)
    out = _step(machine, Submit(JOB, 1, 60.0, hardware="cpu", gpus_per_node=4), now)
    assert machine.outcome == "failed"
    assert any(isinstance(d, Finish) and "gpus_per_node=4" in d.reason for d in out)


def test_machine_accepts_matching_slots_and_refuses_heterogeneous_ones():
    """2-slot agents start a cpu job of 2-device nodes; a 1-slot agent is refused as heterogeneous."""
    machine, now = MembershipMachine(), [100.0]
    _step(machine, Submit(JOB, 2, 60.0, hardware="cpu"), now)
    for n in (0, 1):
        assert isinstance(
            _step(machine, Register(conn=n, index=n, host="h", pid=n, slots=2), now)[0], Welcome
        )
    out = _step(machine, Register(conn=5, index=5, host="h", pid=5, slots=1), now)
    assert isinstance(out[0], Reject) and "homogeneous" in out[0].reason
    assert machine.outcome is None
    for n in (0, 1):
        _step(machine, Ready(n), now)
    assert machine.membership is not None and machine.membership.slots == 2
