"""Milestones of a live demo job on stderr, read from its run directory while the job runs.

Assumptions:
    * The runtime appends whole JSON lines to ``metrics.jsonl`` and writes ``master.json``,
      ``agents.json`` and the kill record as single JSON documents; a half-written one is read
      again on the next poll.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from oobleck.demo.text import ids
from oobleck.viz.live import KILL_FILE
from oobleck.viz.runs import METRICS_FILE

logger = logging.getLogger(__name__)

_POLL_S = 0.2


class Progress:
    """Tails the run directory from a background thread and reports milestones on stderr.

    Only reads files; the job itself is driven by :func:`~oobleck.viz.live.record_failure_run` on
    the caller's thread. Used as a context manager: leaving it stops the thread after one last read.
    """

    def __init__(self, run_dir: Path, steps: int, nodes: int, console: Console) -> None:
        """Prepare the reader; the thread starts on ``__enter__``.

        Args:
            run_dir: the job's run directory.
            steps: training steps of the job (every quarter of them is reported).
            nodes: agents the job starts (their start is reported once all are up).
            console: where the lines go.
        """
        self._run_dir, self._steps, self._nodes, self._console = run_dir, steps, nodes, console
        self._every = max(1, steps // 4)
        self._offset = 0
        self._announced: dict[str, bool] = {}
        self._members: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(_POLL_S):
                self._poll()
            self._poll()
        except (OSError, ValueError, KeyError, StopIteration) as error:
            # NOTE: progress lines are a courtesy; the job and the final timeline do not depend on them.
            logger.warning("progress display stopped: %r", error)

    def _say(self, message: str) -> None:
        self._console.print(f"demo: {message}", soft_wrap=True)

    def _poll(self) -> None:
        self._once("master.json", lambda m: f"master up at {m['address']}:{m['port']}")
        self._once("agents.json", self._agents)
        for row in self._new_rows():
            self._report(row)
        self._once(KILL_FILE, self._killed)

    def _once(self, name: str, message: Callable[[Any], str | None]) -> None:
        """Announce a file of the run directory once, when ``message`` finds it complete."""
        path = self._run_dir / name
        if self._announced.get(name) or not path.is_file():
            return
        try:
            text = message(json.loads(path.read_text()))
        except json.JSONDecodeError:
            return  # NOTE: still being written; read again on the next poll.
        if text is not None:
            self._announced[name] = True
            self._say(text)

    def _agents(self, rows: list[dict[str, Any]]) -> str | None:
        if len(rows) < self._nodes:
            return None
        pids = ", ".join(str(row["agent_pid"]) for row in rows)
        return f"{len(rows)} agents started (pids {pids}); their workers import torch (~15 s here)"

    def _killed(self, kill: dict[str, Any]) -> str:
        agents = json.loads((self._run_dir / "agents.json").read_text())
        victim = next(row for row in agents if row["node"] == kill["node"])
        workers = ", ".join(str(pid) for pid in victim.get("worker_pids", ()))
        return f"killing node {kill['node']}: SIGKILL to agent pid {victim['agent_pid']}, workers {workers}"

    def _new_rows(self) -> list[dict[str, Any]]:
        path = self._run_dir / METRICS_FILE
        if not path.is_file():
            return []
        with path.open("rb") as metrics:
            metrics.seek(self._offset)
            data = metrics.read()
        # NOTE: the runtime may be halfway through a line; keep it for the next poll.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    def _report(self, row: dict[str, Any]) -> None:
        event = row.get("event", "step")
        if event == "membership":
            self._members[int(row["generation"])] = len(row["members"])
            if not row.get("lost"):
                self._say(f"job started on nodes {ids(row['members'])}")
                return
            self._once(KILL_FILE, self._killed)
            reason = row.get("reason", "node lost")
            self._say(f"master: {reason}; generation {row['generation']} on nodes {ids(row['members'])}")
        elif event == "recovery":
            total_ms = sum(row["phases_s"].values()) * 1e3
            moved = (
                f"{row.get('layers_copied', 0)} layers ({row.get('transfer_bytes', 0) / 1e3:.1f} KB) copied, "
            )
            self._say(f"recovered in {total_ms:.0f} ms: {moved}step {row['step']} redone on the survivors")
        elif event == "step" and (row["step"] % self._every == 0 or row["step"] == self._steps - 1):
            nodes = self._members.get(int(row.get("generation", 0)), "?")
            self._say(f"step {row['step']}/{self._steps - 1}  loss {row['loss']:.3f}  on {nodes} nodes")
        elif event == "job_completed":
            self._say(f"master: job completed ({row.get('reason', '')})")
