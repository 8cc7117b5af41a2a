"""A daemon master's job bookkeeping against a real Master: ids, run dirs, stores, cancel, timeout."""

from __future__ import annotations

import json

from oobleck.runtime.control.job_table import JobTable, format_jobs
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.master_config import MasterConfig
from oobleck.runtime.control.protocol import connect
from tests.unit.runtime.control_setup import TOKEN


def _register(master: Master, index: int):
    channel = connect("127.0.0.1", master.server.port, TOKEN, "agent")
    channel.send({"type": "register", "index": index, "slots": 1, "host": "h", "pid": 1})
    return channel, channel.recv(3)


def test_cancel_fails_the_running_job_and_records_it(master, job):
    """`cancel job1` ends the running job (state cancelled in jobs.json); a second cancel is refused."""
    job_id = master.submit(job, 2, daemon=True)
    assert job_id == "job1" and master.job_dir == master.config.run_dir / "jobs" / "job1"
    assert master.cancel("job1")
    assert master.wait(2) == "failed"
    rows = json.loads((master.config.run_dir / "jobs.json").read_text())
    assert rows[0]["state"] == "cancelled" and "cancelled by the user" in rows[0]["reason"]
    assert not master.cancel("job1") and not master.cancel("job9")


def test_a_job_times_out_with_a_reason(master, job):
    """A submitted job whose agents never come fails after its timeout_s, saying so."""
    master.submit(job, 2, timeout_s=0.3, daemon=True)
    assert master.wait(5) == "failed"
    records = [json.loads(x) for x in (master.job_dir / "metrics.jsonl").read_text().splitlines()]
    assert "timed out after 0 s" in records[-1]["reason"]
    assert master.jobs.find("job1").state == "failed"


def test_second_job_gets_its_own_dir_and_an_empty_store_on_a_new_port(master, job):
    """After job1 ends, job2 runs in jobs/job2 with a fresh store port in master.json and the job message."""
    master.submit(job, 1, daemon=True)
    first_store = master.store.port
    master.cancel("job1")
    master.wait(2)
    assert master.submit(job, 1, daemon=True) == "job2"
    info = json.loads((master.config.run_dir / "master.json").read_text())
    assert master.store.port != first_store and info["store_port"] == master.store.port
    message = json.loads((master.job_dir / "job.json").read_text())["job"]
    assert message["store"]["port"] == master.store.port and message["run_dir"].endswith("jobs/job2")


def test_agents_of_an_ended_job_do_not_count_for_the_next(tmp_path, job):
    """A node still connected from job1 is not a ready member of job2 (job2 waits for fresh agents)."""
    config = MasterConfig(run_dir=tmp_path / "run", heartbeat_interval_s=0.2, missed_heartbeats=100)
    master = Master(config, TOKEN)
    master.submit(job, 1, daemon=True)
    channel, welcome = _register(master, 0)
    assert welcome["type"] == "welcome"
    channel.send({"type": "ready"})
    assert channel.recv(3)["type"] == "job"
    master.cancel("job1")
    master.wait(2)
    master.submit(job, 1, daemon=True)
    assert master.membership is None  # NOTE: before the fix, node 0 (job1's) started job2 at once.
    fresh, welcome = _register(master, 0)
    assert welcome["type"] == "welcome" and welcome["run_dir"].endswith("jobs/job2")
    channel.close()
    fresh.close()
    master.close()


def test_job_table_formats_rows():
    """The jobs table shows id, state, age and the failure reason."""
    table = JobTable(root=__import__("pathlib").Path("/r"))
    entry = table.add(4, 60.0, now=100.0)
    table.end(entry.job_id, "failed", "no nodes left", now=130.0)
    text = format_jobs(table.rows(), now=200.0)
    assert "job1" in text and "failed" in text and "30s" in text and "(no nodes left)" in text
    assert format_jobs([]) == "no jobs\n"
