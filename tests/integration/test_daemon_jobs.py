"""A daemon master runs several real training jobs one after the other, each like a one-shot run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oobleck.cli import jobs as jobs_cli
from oobleck.cli import status as status_cli
from oobleck.cli import submit as submit_cli
from tests.integration.harness import (
    Run,
    assert_losses_match,
    kill_run,
    run_standalone,
    write_hosts,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 4


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(900)
def test_daemon_runs_three_jobs_each_equal_to_a_one_shot_run(tmp_path, capsys, monkeypatch):
    """Three jobs submitted in turn to one daemon (the second while the first's agents still run) each
    complete in their own run dir with the losses of the fault-free reference run."""
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)
    job, hosts = write_job(tmp_path, steps=STEPS), write_hosts(tmp_path, 2)
    # NOTE: the standalone worker cannot tolerate faults (f=0); f changes the plan, not the losses.
    reference = run_standalone(tmp_path / "reference", write_job(tmp_path, steps=STEPS, f=0))
    run_dir = tmp_path / "daemon"
    env = {k: v for k, v in os.environ.items() if k != "OOBLECK_TOKEN"}
    with (tmp_path / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "oobleck.runtime.master", "--run-dir", str(run_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    job_dirs = [run_dir / "jobs" / f"job{i}" for i in (1, 2, 3)]
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "token").exists() or not (run_dir / "master.json").exists():
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.05)
        still_running = []
        for index, job_dir in enumerate(job_dirs):
            if index == 1:
                pids = [row["agent_pid"] for row in json.loads((job_dirs[0] / "agents.json").read_text())]
                still_running = [pid for pid in pids if _alive(pid)]
            argv = ["--run-dir", str(run_dir), "--config", str(job), "--hostfile", str(hosts), "--wait"]
            code = submit_cli.main(argv)
            out = capsys.readouterr().out
            assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
            assert f"job{index + 1} accepted; run dir {job_dir}" in out
            assert f"job{index + 1} completed" in out
        assert still_running, "the first job's agents had all exited before the second submission"
        assert jobs_cli.main(["--run-dir", str(run_dir)]) == 0
        table = capsys.readouterr().out
        assert [line.split()[:2] for line in table.splitlines()[1:]] == [
            [f"job{i}", "completed"] for i in (1, 2, 3)
        ]
    finally:
        daemon.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(15)
        for job_dir in job_dirs:
            kill_run(job_dir)
        kill_run(run_dir, daemon)
    for job_dir in job_dirs:
        records = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()]
        assert_losses_match(Run(0, job_dir, None, records), reference)
        assert [r["generation"] for r in records if r.get("event") == "membership"] == [0]
        assert (job_dir / "agent0.log").is_file() and (job_dir / "agents.json").is_file()
        assert status_cli.main([str(job_dir)]) == 0
        status = capsys.readouterr().out
        assert "job      completed" in status and "plan     generation 0: 2 pipelines" in status
        assert f"step {STEPS}/{STEPS}" in status and "steps/s" in status
    assert f"job3: step {STEPS}/{STEPS}  loss" in (tmp_path / "daemon.log").read_text()
