"""The control plane without training: CLI exit codes, daemon + submit, worker errors, run-dir files.

Workers here are a stand-in module (written to a temp dir and put on PYTHONPATH) that talks the
agent link protocol and exits, so these runs take seconds; every process started is killed by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oobleck.cli import master as master_cli
from oobleck.cli import submit as submit_cli
from oobleck.runtime.control.protocol import AuthenticationError, connect

pytestmark = pytest.mark.integration

FAKE_WORKER = """
import argparse, json, os, sys, time
from oobleck.runtime.control.link import WorkerLink
parser = argparse.ArgumentParser()
parser.add_argument("--config"); parser.add_argument("--run-dir")
parser.parse_args()
link = WorkerLink.from_env()
link.send_ready()
membership = link.wait_newer(-1, 30)
assert membership is not None and int(os.environ["OOBLECK_NODE"]) in membership.members
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.5")))
if os.environ.get("FAKE_JOB_ERROR_NODE") == os.environ["OOBLECK_NODE"]:
    link.report_job_error("cannot write checkpoint step 5 to /ck: Not a directory")
    time.sleep(0.5)
    sys.exit(1)
if os.environ.get("FAKE_FAIL_NODE") == os.environ["OOBLECK_NODE"]:
    with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as out:
        json.dump({"message": "ValueError: injected failure", "timestamp": time.time()}, out)
    sys.exit(1)
"""

JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 2\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Environment whose agents run the stand-in worker."""
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)
    return {**os.environ, "PYTHONPATH": path, "OOBLECK_WORKER_MODULE": "fake_worker"}


def _files(tmp_path: Path, agents: int = 2) -> tuple[Path, Path]:
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n" * agents)
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    return hosts, job


def _kill_run(run_dir: Path, *procs: subprocess.Popen) -> None:
    if (run_dir / "agents.json").exists():
        for row in json.loads((run_dir / "agents.json").read_text()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(row["agent_pid"], signal.SIGKILL)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _master(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oobleck.runtime.master", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_bad_hostfile_exits_2_with_file_and_line(tmp_path, capsys):
    """A malformed hostfile line makes the master exit 2 naming file:line, before starting anything."""
    hosts, job = _files(tmp_path)
    hosts.write_text("localhost\nlocalhost gpus=2\n")
    code = master_cli.main(["--hostfile", str(hosts), "--config", str(job), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{hosts}:2: unknown field 'gpus=2'" in err
    assert "Traceback" not in err


def test_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    """An unknown job key makes the master exit 2 naming the file and the key."""
    hosts, job = _files(tmp_path)
    job.write_text(JOB + "optim:\n  learning_rate: 0.1\n")
    code = master_cli.main(["--hostfile", str(hosts), "--config", str(job), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "job.yaml: optim.learning_rate: unknown key" in err


def test_routable_bind_without_token_exits_2(tmp_path, capsys):
    """Binding 0.0.0.0 without a user token is refused with exit 2."""
    hosts, job = _files(tmp_path)
    argv = [
        "--hostfile",
        str(hosts),
        "--config",
        str(job),
        "--run-dir",
        str(tmp_path / "r"),
        "--host",
        "0.0.0.0",
    ]
    assert master_cli.main(argv) == 2
    assert "non-loopback address needs a shared token" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_one_shot_job_writes_run_files_and_exits_0(tmp_path, env):
    """A one-shot job exits 0 and leaves master.json (no token), agents.json with pids, and agent logs."""
    hosts, job = _files(tmp_path)
    run_dir = tmp_path / "run"
    master = _master(
        ["--hostfile", str(hosts), "--config", str(job), "--run-dir", str(run_dir)],
        env,
        tmp_path / "master.log",
    )
    try:
        assert master.wait(90) == 0, (tmp_path / "master.log").read_text()
    finally:
        _kill_run(run_dir, master)
    info = json.loads((run_dir / "master.json").read_text())
    token = (run_dir / "token").read_text().strip()
    assert info["address"] == "127.0.0.1" and info["port"] > 0
    assert token not in (run_dir / "master.json").read_text()
    assert token not in (tmp_path / "master.log").read_text()
    assert oct((run_dir / "token").stat().st_mode & 0o777) == "0o600"
    rows = json.loads((run_dir / "agents.json").read_text())
    assert [r["node"] for r in rows] == [0, 1] and all(r["agent_pid"] and r["worker_pids"] for r in rows)
    assert (run_dir / "agent0.log").exists() and (run_dir / "agent1.log").exists()


@pytest.mark.timeout(120)
def test_worker_error_is_reported_and_job_fails(tmp_path, env):
    """When every node's worker fails, the master exits 1 and reports the first worker error."""
    hosts, job = _files(tmp_path, agents=1)
    run_dir = tmp_path / "run"
    env = {**env, "FAKE_FAIL_NODE": "0"}
    master = _master(
        ["--hostfile", str(hosts), "--config", str(job), "--run-dir", str(run_dir)],
        env,
        tmp_path / "master.log",
    )
    try:
        assert master.wait(90) == 1
    finally:
        _kill_run(run_dir, master)
    log = (tmp_path / "master.log").read_text()
    assert "first worker error (node 0): ValueError: injected failure" in log


def test_a_workers_job_error_fails_the_job_once_without_losing_a_node(tmp_path, env):
    """A job error a worker reports (e.g. an unwritable checkpoint dir) fails the job once with its
    cause, and no node is declared lost for it."""
    hosts, job = _files(tmp_path, agents=2)
    run_dir = tmp_path / "run"
    env = {**env, "FAKE_JOB_ERROR_NODE": "1", "FAKE_SECONDS": "5"}
    master = _master(
        ["--hostfile", str(hosts), "--config", str(job), "--run-dir", str(run_dir)],
        env,
        tmp_path / "master.log",
    )
    try:
        assert master.wait(90) == 1
    finally:
        _kill_run(run_dir, master)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    failed = [r for r in records if r.get("event") == "job_failed"]
    assert len(failed) == 1 and "node 1: cannot write checkpoint step 5" in failed[0]["reason"]
    assert not [r for r in records if r.get("event") == "membership" and r.get("lost")]


@pytest.mark.timeout(120)
def test_daemon_accepts_a_submitted_job(tmp_path, env, capsys, monkeypatch):
    """A daemon master runs a job given by `oobleck submit --wait`, which exits 0 when it completes."""
    hosts, job = _files(tmp_path)
    run_dir = tmp_path / "daemon"
    daemon = _master(["--run-dir", str(run_dir)], env, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "master.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setenv("OOBLECK_WORKER_MODULE", "fake_worker")
        code = submit_cli.main(
            ["--run-dir", str(run_dir), "--config", str(job), "--hostfile", str(hosts), "--wait"]
        )
        assert code == 0, (tmp_path / "daemon.log").read_text()
        assert "job1 completed" in capsys.readouterr().out
        bad = submit_cli.main(["--run-dir", str(run_dir), "--config", str(job)])
        assert bad == 2
        assert "--nodes N" in capsys.readouterr().err
    finally:
        daemon.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(10)
        _kill_run(run_dir, daemon)


TOKEN = b"0123456789abcdef0123456789abcdef"

EMFILE_SERVER = """
import logging, resource, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from oobleck.runtime.control.protocol import Channel
from oobleck.runtime.control.server import ControlServer
def echo(channel: Channel, role: str) -> None:
    while True:
        channel.send({"type": "echo", "got": channel.recv()})
srv = ControlServer(%r, echo, max_per_peer=10000, handshake_timeout_s=30.0)
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
print(srv.port, flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_fd_exhaustion_in_accept_is_survived(tmp_path):
    """With its fds exhausted by silent clients the server logs, backs off, and serves once they free."""
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", EMFILE_SERVER % (TOKEN,)],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ},
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        silent = []
        for _ in range(60):
            silent.append(socket.create_connection(("127.0.0.1", port)))
        deadline = time.monotonic() + 5
        while "cannot accept connections" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "cannot accept connections" in log.read_text(), log.read_text()
        for sock in silent:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                channel = connect("127.0.0.1", port, TOKEN, "agent", timeout_s=2)
                channel.send({"type": "ping"})
                assert channel.recv(3)["type"] == "echo"
                channel.close()
                break
            except (OSError, AuthenticationError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(5)
