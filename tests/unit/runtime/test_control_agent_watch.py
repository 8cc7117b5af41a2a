"""The agent reports a worker's exit the moment it happens, not at a poll of its processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from oobleck.runtime.control import agent as agent_module
from oobleck.runtime.control.agent import Agent, AgentConfig, _Worker
from oobleck.runtime.control.protocol import Channel


def test_a_worker_exit_is_reported_without_waiting_for_the_backstop(tmp_path: Path, monkeypatch) -> None:
    """With a 30 s backstop, a worker exiting with code 3 is reported (and ends the node) within seconds."""
    monkeypatch.setattr(agent_module, "WORKER_POLL_S", 30.0)
    agent = Agent(AgentConfig(master_host="127.0.0.1", master_port=1), b"k" * 32)
    sent: list[tuple[float, dict[str, Any]]] = []
    monkeypatch.setattr(agent, "_send", lambda message, keep=True: sent.append((time.monotonic(), message)))
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(3)"])
    agent.workers = [_Worker(0, process, Channel(ours, b"k" * 32, is_server=True, peer="w"), tmp_path / "e")]
    threading.Thread(target=agent._await_exit, args=(process, agent._worker_exited), daemon=True).start()
    watch = threading.Thread(
        target=agent._watch_workers, args=(agent._stop, agent._worker_exited), daemon=True
    )
    watch.start()
    process.wait(10)
    exited_at = time.monotonic()
    watch.join(10)
    assert not watch.is_alive() and agent._exit_code == 1
    ((at, message),) = sent
    assert message["type"] == "worker_exit" and message["code"] == 3
    assert at - exited_at < 5.0
    theirs.close()
    agent.workers[0].channel.close()
