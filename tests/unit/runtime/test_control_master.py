"""Tests for the master's I/O shell: malformed agent messages and run-dir errors, against a real Master."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.protocol import Channel, connect
from tests.unit.runtime.control_setup import TINY_JOB as JOB
from tests.unit.runtime.control_setup import TOKEN


@pytest.fixture
def thread_errors():
    """Exceptions that escaped any thread during the test (there must be none)."""
    caught: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(args.exc_value)  # type: ignore[assignment]
    yield caught
    threading.excepthook = previous


def _agent(master: Master, **fields) -> tuple[Channel, dict]:
    channel = connect("127.0.0.1", master.server.port, TOKEN, "agent")
    channel.send({"type": "register", "index": None, "slots": 1, "host": "h", "pid": 1, **fields})
    return channel, channel.recv(3)


def test_malformed_slots_get_a_logged_rejection(master, caplog, thread_errors):
    """`slots: "abc"` from an authenticated agent is answered with an error and a log line, no thread dies."""
    caplog.set_level(logging.WARNING)
    channel, reply = _agent(master, slots="abc")
    assert reply["type"] == "error" and "slots='abc' is not an integer" in reply["message"]
    channel.close()
    assert any("rejected agent" in r.getMessage() for r in caplog.records)
    good, welcome = _agent(master)
    assert welcome["type"] == "welcome" and welcome["node"] == 0
    good.close()
    assert thread_errors == []


def test_malformed_message_after_registration_keeps_the_node(master, caplog, thread_errors):
    """A registered node sending `code: "x"` gets a rejection; it is not declared lost."""
    caplog.set_level(logging.WARNING)
    channel, welcome = _agent(master)
    assert welcome["type"] == "welcome"
    channel.send({"type": "worker_exit", "local_rank": 0, "code": "x"})
    assert channel.recv(3)["type"] == "rejected"
    channel.send({"type": "regroup", "generation": 0, "missing": ["a"]})
    assert channel.recv(3)["type"] == "rejected"
    assert master.machine.nodes[0].alive
    channel.close()
    assert thread_errors == []


def test_unwritable_metrics_fail_the_job_once_without_losing_a_node(master, tmp_path, caplog):
    """metrics.jsonl being unwritable fails the job with its cause; the node that triggered it is not lost."""
    caplog.set_level(logging.INFO)
    (master.config.run_dir / "metrics.jsonl").mkdir()
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB)
    master.submit(JobSpec.from_path(job_file), expected_agents=1)
    channel, welcome = _agent(master)
    assert welcome["type"] == "welcome"
    assert channel.recv(3)["type"] == "job"
    channel.send({"type": "ready"})
    assert master.wait(5) == "failed"
    time.sleep(0.2)
    errors = [r.getMessage() for r in caplog.records if "cannot write the run dir" in r.getMessage()]
    assert len(errors) == 1 and "metrics.jsonl" in errors[0]
    assert not any("lost" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    channel.close()


def test_a_loss_notice_is_queued_before_the_run_dir_writes(master, tmp_path, monkeypatch):
    """On a node loss the survivors' notice is queued before agents.json and metrics.jsonl are written."""
    from oobleck.runtime.control import master as master_module
    from oobleck.runtime.control import master_files
    from oobleck.runtime.control.outbox import Outbox

    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB)
    master.submit(JobSpec.from_path(job_file), expected_agents=2)
    channels = [_agent(master)[0] for _ in range(2)]
    for channel in channels:
        assert channel.recv(3)["type"] == "job"
        channel.send({"type": "ready"})
    assert channels[0].recv(3)["generation"] == 0
    order: list[str] = []
    put, write_agents, append = Outbox.put, master_files.write_agents, master_module.append_jsonl

    def spy_put(self: Outbox, message: dict) -> None:
        if message.get("type") == "membership":
            order.append(f"notice gen {message['generation']}")
        put(self, message)

    monkeypatch.setattr(Outbox, "put", spy_put)
    monkeypatch.setattr(
        master_files, "write_agents", lambda *a: (order.append("agents.json"), write_agents(*a))
    )
    monkeypatch.setattr(master_module, "append_jsonl", lambda *a: (order.append("metrics"), append(*a)))
    channels[1].close()
    notice = channels[0].recv(3)
    assert notice["type"] == "membership" and notice["generation"] == 1 and notice["lost"] == [1]
    # NOTE: the notice can arrive before the master's thread has done the writes that follow it.
    deadline = time.monotonic() + 3.0
    while not {"agents.json", "metrics"} <= set(order) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert order[0] == "notice gen 1" and {"agents.json", "metrics"} <= set(order[1:])
    channels[0].close()
