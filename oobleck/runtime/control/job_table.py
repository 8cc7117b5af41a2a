"""The jobs a daemon master has run: ids, run dirs, states (pure bookkeeping, written as jobs.json).

Assumptions:
- Job ids are ``job<N>``, N counting from 1 in submission order on one daemon; each job runs in its
  own folder ``<daemon run dir>/jobs/<id>/`` (metrics.jsonl, job.json, agents.json, agent logs,
  checkpoints), so one job's checkpoints or records are never read by the next.
- One job runs at a time; the table only records, the master decides.
- Every job has a timeout (:data:`DEFAULT_JOB_TIMEOUT_S` unless the submitter sets one), so a job
  whose agents never finish fails with a reason instead of holding the daemon forever.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_JOB_TIMEOUT_S = 24 * 3600.0
"""A submitted job fails after this long (24 h) unless ``oobleck submit --timeout-s`` says otherwise."""

JOBS_DIR = "jobs"
"""Subfolder of the daemon's run dir that holds one folder per job."""


@dataclass(slots=True)
class JobEntry:
    """One submitted job."""

    job_id: str
    run_dir: str
    submitted_t: float
    """Wall-clock submission time (s since the epoch)."""
    expected_agents: int
    timeout_s: float
    state: str = "running"
    """``running``, ``completed``, ``failed`` or ``cancelled``."""
    reason: str = ""
    ended_t: float | None = None


@dataclass(slots=True)
class JobTable:
    """The daemon's jobs, in submission order."""

    root: Path
    """The daemon's run dir."""
    entries: list[JobEntry] = field(default_factory=list)

    def next_id(self) -> str:
        """The id the next submission gets."""
        return f"job{len(self.entries) + 1}"

    def add(self, expected_agents: int, timeout_s: float, now: float | None = None) -> JobEntry:
        """Record a new running job and return it (its run dir is ``root/jobs/<id>``)."""
        job_id = self.next_id()
        entry = JobEntry(
            job_id,
            str(self.root / JOBS_DIR / job_id),
            time.time() if now is None else now,
            expected_agents,
            timeout_s,
        )
        self.entries.append(entry)
        return entry

    def find(self, job_id: str) -> JobEntry | None:
        """The entry of ``job_id``, or None."""
        return next((e for e in self.entries if e.job_id == job_id), None)

    def running(self) -> JobEntry | None:
        """The job still running, if any."""
        return next((e for e in self.entries if e.state == "running"), None)

    def end(self, job_id: str, outcome: str, reason: str, now: float | None = None) -> None:
        """Mark a job ended (``cancelled`` wins over the ``failed`` its cancellation causes)."""
        entry = self.find(job_id)
        if entry is None or entry.state not in ("running", "cancelling"):
            return
        entry.state = "cancelled" if entry.state == "cancelling" else outcome
        entry.reason, entry.ended_t = reason, time.time() if now is None else now

    def rows(self) -> list[dict[str, Any]]:
        """The table as plain data (``jobs.json`` and the ``jobs`` reply)."""
        return [asdict(e) for e in self.entries]


def format_jobs(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The ``oobleck jobs`` table: id, state, age, agents, run dir, reason.

    Args:
        rows: :meth:`JobTable.rows` (as received over the wire).
        now: Wall-clock time the ages are measured to.

    Returns:
        Text lines, a header first; "no jobs" when empty.
    """
    if not rows:
        return "no jobs\n"
    now = time.time() if now is None else now
    lines = [f"{'JOB':<8} {'STATE':<10} {'AGE':>8} {'AGENTS':>6}  RUN DIR / REASON"]
    for row in rows:
        end = row.get("ended_t") or now
        age = f"{max(0.0, end - float(row['submitted_t'])):.0f}s"
        reason = f"  ({row['reason']})" if row.get("reason") else ""
        head = f"{row['job_id']:<8} {row['state']:<10} {age:>8} {row['expected_agents']:>6}"
        lines.append(f"{head}  {row['run_dir']}{reason}")
    return "\n".join(lines) + "\n"
