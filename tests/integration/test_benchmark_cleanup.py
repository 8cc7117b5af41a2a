"""A recovery benchmark stopped with SIGTERM leaves none of its nodes running.

The agents outlive a master killed mid-run (they keep training for ``--reconnect-timeout-s``,
waiting for it to return), so a benchmark that only killed its master left four agents and their
workers training, and a failed run loaded the runs that followed it.
"""

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

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by its new parent, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _nodes_started(agents: Path, deadline: float) -> list[int]:
    """Pids of every agent and worker once all four agents list their worker."""
    while time.monotonic() < deadline:
        try:
            rows = json.loads(agents.read_text())
        except (OSError, json.JSONDecodeError):
            rows = []
        if len(rows) == 4 and all(row.get("worker_pids") for row in rows):
            return [pid for row in rows for pid in (row["agent_pid"], *row["worker_pids"])]
        time.sleep(0.05)
    raise AssertionError(f"the benchmark's four nodes did not start (see {agents.parent})")


def test_a_sigtermed_benchmark_leaves_no_node_running(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [sys.executable, str(REPO / "benchmarks" / "recovery.py"), "--part", "a", "--oobleck-only"]
    argv += ["--repeats", "1", "--steps", "100000", "--out", str(out)]
    log = (tmp_path / "bench.log").open("w")
    bench = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pids: list[int] = []
    try:
        pids = _nodes_started(out / "a-ref-oobleck" / "agents.json", time.monotonic() + 150)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _alive(pid)], "nodes left running after the benchmark ended"
    finally:
        for pid in [bench.pid, *pids]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        bench.wait()
        log.close()
