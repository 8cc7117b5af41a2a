"""The master's files in the run directory, and what a resumed master reads back from them.

Files (all but metrics.jsonl are replaced atomically by rename):

- ``master.json``: address, control port, store port, pid (never the token); a resumed master
  binds the same ports so agents and workers find it where they left it.
- ``job.json``: the running job's message and how many agents it expects (written at submit).
- ``agents.json``: one row per node (pids for tests and operators).
- ``metrics.jsonl``: every membership the master announced, *before* it is sent, so the last one in
  the file is never older than what any agent runs.

Assumptions:
- A write that fails (ENOSPC, a read-only or replaced file) raises ``OSError``; the master turns it
  into a job error with its cause, never into a lost node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_machine import NodeState
from oobleck.runtime.control.records import write_json_atomic


@dataclass(frozen=True, slots=True)
class MasterInfo:
    """What ``master.json`` records."""

    address: str
    port: int
    store_port: int
    pid: int


def write_master_info(run_dir: Path, info: MasterInfo) -> None:
    """Write ``master.json``.

    Raises:
        OSError: The run directory is not writable.
    """
    write_json_atomic(
        run_dir / "master.json",
        {"address": info.address, "port": info.port, "store_port": info.store_port, "pid": info.pid},
    )


def read_master_info(run_dir: Path) -> MasterInfo:
    """Read ``master.json`` of a run to resume.

    Raises:
        ConfigError: It is missing or malformed (the message says which and how to fix it).
    """
    path = run_dir / "master.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return MasterInfo(str(data["address"]), int(data["port"]), int(data["store_port"]), int(data["pid"]))
    except FileNotFoundError:
        raise ConfigError(f"--resume {run_dir}: no master.json; is this the run dir of a master?") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); start a new run instead of --resume") from None


def write_job(run_dir: Path, job: dict[str, Any], expected_agents: int) -> None:
    """Record the running job for a resumed master.

    Raises:
        OSError: The run directory is not writable.
    """
    write_json_atomic(run_dir / "job.json", {"job": job, "expected_agents": expected_agents})


def read_job(run_dir: Path) -> tuple[dict[str, Any] | None, int]:
    """The job a resumed master continues: its message and expected agents (None, 0 for a daemon)."""
    path = run_dir / "job.json"
    if not path.is_file():
        return None, 0
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["job"]), int(data["expected_agents"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); start a new run instead of --resume") from None


def last_membership(run_dir: Path) -> Membership | None:
    """The last generation the master announced, or None if no job is running (none, or it ended).

    Args:
        run_dir: The run directory whose ``metrics.jsonl`` to read.

    Returns:
        The newest announced membership after the newest job start, unless a job outcome follows it.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    latest: Membership | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"source": "master"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # NOTE: a line cut by the crash that the resume follows.
        if record.get("event") == "membership":
            try:
                latest = Membership.from_message(record)
            except ValueError:
                continue
        elif str(record.get("event", "")).startswith("job_"):
            latest = None
    return latest


def write_agents(run_dir: Path, nodes: Iterable[NodeState], launcher_pids: dict[int, int]) -> None:
    """Rewrite ``agents.json``: one row per node known to the master, by node id.

    Args:
        run_dir: The run directory.
        nodes: The membership machine's node table.
        launcher_pids: Pid of the local process that launched each node's agent (ssh/srun/agent).

    Raises:
        OSError: The run directory is not writable.
    """
    rows = [
        {
            "node": s.node,
            "host": s.host,
            "agent_pid": s.pid,
            "worker_pids": list(s.worker_pids),
            "alive": s.alive,
            "launcher_pid": launcher_pids.get(s.node),
        }
        for s in sorted(nodes, key=lambda s: s.node)
    ]
    write_json_atomic(run_dir / "agents.json", rows)
