"""What ``oobleck status RUN_DIR`` shows: nodes, the current plan's pipelines and stages, progress and
step rate, the last recoveries and the job's outcome, all read from the run dir's files.

Assumptions:
- The files are the ones the master and the reporter write (agents.json, job.json, metrics.jsonl,
  plan.json); each is read whole and may be mid-update, so a missing or half-written file shows as
  "unknown", never as an error.
- A daemon's run dir holds one folder per job (``jobs/<id>/``); given the daemon's run dir, the
  newest job is shown.
- Torch-free: this runs on a login node next to a live job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.runtime.control.status_service import read_view
from oobleck.runtime.control.status_view import StatusView, render


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def job_dir_of(run_dir: Path) -> Path:
    """The folder of the job to show: ``run_dir`` itself, or a daemon's newest ``jobs/<id>/``.

    Raises:
        ConfigError: ``run_dir`` is no run dir of oobleck.
    """
    if any((run_dir / name).exists() for name in ("metrics.jsonl", "job.json", "plan.json", "agents.json")):
        return run_dir
    jobs = sorted(
        (p for p in (run_dir / "jobs").glob("job*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:])
    )
    if jobs:
        return jobs[-1]
    raise ConfigError(
        f"{run_dir}: no metrics.jsonl, job.json or jobs/; pass the run dir of an oobleck master"
    )


def total_steps_of(job_dir: Path) -> int:
    """The ``steps`` of the job recorded in ``job_dir/job.json`` (0 when unknown)."""
    from oobleck.runtime.config import job_config_from_text

    data = _read_json(job_dir / "job.json")
    try:
        text = data["job"]["config_text"]
        return job_config_from_text(text, source=str(job_dir / "job.json")).steps
    except (TypeError, KeyError, ConfigError):
        return 0


def status_view(run_dir: Path) -> StatusView:
    """The status of a run dir, as the data ``oobleck status --master`` receives from a live master.

    Args:
        run_dir: A run dir (one-shot master, or a daemon's, or one of its ``jobs/<id>/``).

    Returns:
        The view of its job (a daemon's newest).

    Raises:
        ConfigError: ``run_dir`` is no run dir of oobleck.
    """
    job_dir = job_dir_of(run_dir)
    return read_view(job_dir, total_steps_of(job_dir))


def status_text(run_dir: Path) -> str:
    """The status report of a run dir (see the module docstring).

    Args:
        run_dir: A run dir (one-shot master, or a daemon's, or one of its ``jobs/<id>/``).

    Returns:
        Text lines.

    Raises:
        ConfigError: ``run_dir`` is no run dir of oobleck.
    """
    return render(status_view(run_dir))
