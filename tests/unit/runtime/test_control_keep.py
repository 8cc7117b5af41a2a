"""A real daemon Master and a real kept Agent in-process: one agent serves job after job (``--keep``)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from oobleck.runtime.agent import build_parser
from oobleck.runtime.control.agent import Agent, AgentConfig
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.master_config import MasterConfig
from oobleck.runtime.control.protocol import connect
from tests.unit.runtime.control_setup import TOKEN

WORKER = "tests.unit.runtime.keep_worker"


def _start_agent(master: Master, *, keep: bool) -> tuple[Agent, threading.Thread, list[int]]:
    config = AgentConfig(
        master_host="127.0.0.1",
        master_port=master.server.port,
        index=0,
        worker_module=WORKER,
        connect_timeout_s=5.0,
        keep=keep,
    )
    agent, codes = Agent(config, TOKEN), []
    thread = threading.Thread(target=lambda: codes.append(agent.run()), daemon=True)
    thread.start()
    return agent, thread, codes


def _served(master: Master, job_id: str) -> dict:
    return json.loads((master.config.run_dir / "jobs" / job_id / "served.node0.local0.json").read_text())


@pytest.mark.timeout(60)
def test_a_kept_agent_serves_two_jobs_in_their_own_dirs_and_stores(master, job):
    """One `--keep` agent runs job1 then job2 (own run dir and store each), then exits 0 on a final close."""
    agent, thread, codes = _start_agent(master, keep=True)
    assert master.submit(job, 1, daemon=True) == "job1"
    assert master.wait(20) == "completed"
    first_store = master.store.port  # NOTE: already job2's: the daemon replaces it at a job's end.
    assert master.submit(job, 1, daemon=True) == "job2"
    assert master.wait(20) == "completed"
    assert thread.is_alive() and agent.jobs_served == 2 and agent.node == 0
    one, two = _served(master, "job1"), _served(master, "job2")
    assert one["run_dir"].endswith("jobs/job1") and two["run_dir"].endswith("jobs/job2")
    assert one["store_port"] != two["store_port"] and two["store_port"] == first_store
    assert one["pid"] != two["pid"]
    deadline = time.monotonic() + 10
    while not (0 in master.machine.nodes and master.machine.nodes[0].alive) and time.monotonic() < deadline:
        time.sleep(0.05)  # NOTE: the kept agent registers again, waiting for a third job.
    assert master.machine.nodes[0].alive
    master.close()
    thread.join(10)
    assert not thread.is_alive() and codes == [0] and agent._final


@pytest.mark.timeout(60)
def test_an_agent_without_keep_leaves_after_its_job(master, job):
    """Without `--keep` the agent exits 0 when its job ends and the next job waits for fresh agents."""
    agent, thread, codes = _start_agent(master, keep=False)
    master.submit(job, 1, daemon=True)
    assert master.wait(20) == "completed"
    thread.join(10)
    assert codes == [0] and agent.jobs_served == 1
    master.submit(job, 1, daemon=True)
    time.sleep(0.5)
    assert master.membership is None and not any(s.alive for s in master.machine.nodes.values())


def test_keep_flag_reaches_the_agent_config():
    """`oobleck agent --keep` parses to keep=True and defaults to False."""
    parser = build_parser()
    assert parser.parse_args(["--master", "h:1", "--keep"]).keep is True
    assert parser.parse_args(["--master", "h:1"]).keep is False


def test_closing_the_ended_jobs_connection_does_not_lose_the_fresh_registration(tmp_path, job):
    """A kept node's old connection closing after it re-registered does not declare the new one lost."""
    config = MasterConfig(run_dir=tmp_path / "run", heartbeat_interval_s=5.0, missed_heartbeats=100)
    master = Master(config, TOKEN)
    try:
        master.submit(job, 1, daemon=True)
        old = connect("127.0.0.1", master.server.port, TOKEN, "agent")
        old.send({"type": "register", "index": 0, "slots": 1, "host": "h", "pid": 1})
        assert old.recv(3)["type"] == "welcome" and old.recv(3)["type"] == "job"
        master.cancel("job1")
        master.wait(3)
        assert old.recv(3)["type"] == "shutdown"
        fresh = connect("127.0.0.1", master.server.port, TOKEN, "agent")
        fresh.send({"type": "register", "index": 0, "slots": 1, "host": "h", "pid": 1})
        assert fresh.recv(3)["type"] == "welcome"
        old.close()  # NOTE: the master's reader of `old` is still in its 5 s recv: it sees the close.
        time.sleep(0.5)
        assert master.machine.nodes[0].alive and not master.machine.lost
        fresh.close()
    finally:
        master.close()
