"""Tests for agent launchers: local processes for real, ssh/srun by their command lines.

No sshd or Slurm controller is available on this machine, so the remote launchers are checked by
the exact argv they would run, and the local launcher by really starting a process.
"""

from __future__ import annotations

import socket
import sys
import time

from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.launchers import (
    LocalLauncher,
    SlurmLauncher,
    SshLauncher,
    agent_command,
    is_local_host,
    launcher_for,
)

TOKEN = b"t" * 32


def test_local_host_detection():
    """localhost, 127.x and this machine's name are local; other names are not."""
    assert is_local_host("localhost") and is_local_host("127.0.0.2") and is_local_host(socket.gethostname())
    assert not is_local_host("node-that-does-not-exist")
    assert isinstance(launcher_for(HostEntry("localhost"), slurm=False), LocalLauncher)
    assert isinstance(launcher_for(HostEntry("far"), slurm=False), SshLauncher)
    assert isinstance(launcher_for(HostEntry("far"), slurm=True), SlurmLauncher)


def test_agent_command_has_no_secret(tmp_path):
    """The agent argv uses this interpreter and carries no token."""
    argv = agent_command("127.0.0.1:1234", 3, 2, tmp_path)
    assert argv[0] == sys.executable
    assert argv[1:5] == ["-m", "oobleck.runtime.agent", "--master", "127.0.0.1:1234"]
    assert TOKEN.decode() not in " ".join(argv)


def test_ssh_command_is_strict_and_keeps_token_off_argv(tmp_path):
    """ssh runs in batch mode with strict host keys, the same python path, and reads the token from stdin."""
    launcher = SshLauncher(workdir=tmp_path)
    argv = launcher.command(
        HostEntry("node7", 1, 2222), ["/opt/py/bin/python", "-m", "oobleck.runtime.agent"]
    )
    assert argv[:7] == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ServerAliveInterval=5",
    ]
    assert argv[7:10] == ["-p", "2222", "node7"]
    assert argv[10].startswith(
        f"cd {tmp_path} && IFS= read -r OOBLECK_TOKEN && export OOBLECK_TOKEN && exec "
    )
    assert argv[10].endswith("/opt/py/bin/python -m oobleck.runtime.agent")
    assert launcher.stdin_secret(TOKEN) == TOKEN + b"\n"
    assert TOKEN.decode() not in " ".join(argv)


def test_srun_command():
    """srun starts one task on the named node and exports the environment (which holds the token)."""
    argv = SlurmLauncher().command(HostEntry("n01"), ["python", "-m", "x"])
    assert argv[:4] == ["srun", "--nodes=1", "--ntasks=1", "--nodelist=n01"]
    assert "--export=ALL" in argv and argv[-3:] == ["python", "-m", "x"]


def test_local_launcher_runs_with_token_in_env_and_stops_group(tmp_path):
    """A local agent gets the token via its environment, logs to its file, and stop() ends its group."""
    log = tmp_path / "agent0.log"
    script = "import os,time; print(os.environ['OOBLECK_TOKEN'] == 't'*32, flush=True); time.sleep(30)"
    agent = LocalLauncher().start(0, HostEntry("localhost"), [sys.executable, "-c", script], {}, TOKEN, log)
    deadline = time.monotonic() + 10
    while "True" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "True" in log.read_text()
    agent.stop(timeout_s=5)
    assert agent.process.returncode is not None
    agent.stop()  # idempotent
