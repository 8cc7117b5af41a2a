"""Tests for the README's token and kill instructions: each command runs as written and does its job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from oobleck.runtime.control.master_files import write_agents
from oobleck.runtime.control.membership_machine import NodeState
from oobleck.runtime.control.token import read_token_file

README = Path(__file__).resolve().parents[3] / "README.md"


def _line(prefix: str) -> str:
    """The README line that starts with ``prefix`` (a shell command in a code block)."""
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    assert lines, f"README.md has no line starting with {prefix!r}"
    return lines[0]


def _env(home: Path) -> dict[str, str]:
    """A shell environment whose ``python`` is this interpreter and whose home is ``home``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "HOME": str(home), "PATH": path}


def test_readme_token_command_makes_a_token_file_oobleck_accepts(tmp_path: Path) -> None:
    """The README's one-line token recipe creates ~/.oobleck_token, private and long enough to be read."""
    command = _line("(umask 077")
    subprocess.run(["bash", "-c", command], env=_env(tmp_path), check=True, timeout=30)
    token = read_token_file(tmp_path / ".oobleck_token")
    assert len(token) == 64
    assert (tmp_path / ".oobleck_token").stat().st_mode & 0o077 == 0


def test_readme_kill_command_kills_a_node_agent_and_workers(tmp_path: Path) -> None:
    """The README's kill line, run against a real agents.json, kills node 1's agent and its worker."""
    # NOTE: a stand-in agent in its own session (as the launcher starts agents) with one child worker.
    agent = subprocess.Popen(
        ["bash", "-c", "sleep 60 & echo up; wait"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"up"
        run_dir = tmp_path / "runs" / "demo"
        run_dir.mkdir(parents=True)
        nodes = [
            NodeState(node=0, host="localhost", pid=os.getpid(), slots=1),
            NodeState(node=1, host="localhost", pid=agent.pid, slots=1),
        ]
        write_agents(run_dir, nodes, {0: os.getpid(), 1: agent.pid})
        command = _line("kill -9 -- -$(python")
        subprocess.run(["bash", "-c", command], cwd=tmp_path, env=_env(tmp_path), check=True, timeout=30)
        assert agent.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(agent.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the worker in the agent's process group survived the README's kill")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
