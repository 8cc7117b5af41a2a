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
from oobleck.runtime.control.progress import progress_line, read_records, recovery_line, summarize

RECOVERIES_SHOWN = 3
"""How many of the last recoveries ``status`` lists."""


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


def _total_steps(job_dir: Path) -> int:
    from oobleck.runtime.config import job_config_from_text

    data = _read_json(job_dir / "job.json")
    try:
        text = data["job"]["config_text"]
        return job_config_from_text(text, source=str(job_dir / "job.json")).steps
    except (TypeError, KeyError, ConfigError):
        return 0


def _layers(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0]) if layers else "-"


def status_text(run_dir: Path) -> str:
    """The status report of a run dir (see the module docstring).

    Args:
        run_dir: A run dir (one-shot master, or a daemon's, or one of its ``jobs/<id>/``).

    Returns:
        Text lines.

    Raises:
        ConfigError: ``run_dir`` is no run dir of oobleck.
    """
    job_dir = job_dir_of(run_dir)
    records = read_records(job_dir / "metrics.jsonl")
    plan = _read_json(job_dir / "plan.json")
    if not isinstance(plan, dict) or "generation" not in plan:
        plan = None  # NOTE: a torchrun worker's plan.json is a bare Plan.to_dict(), with no node layout.
    pipelines = plan.get("pipelines") if isinstance(plan, dict) else None
    progress = summarize(
        records, _total_steps(job_dir), len(pipelines) if isinstance(pipelines, list) else None
    )
    ended = [r for r in records if str(r.get("event", "")).startswith("job_")]
    state = f"{ended[-1]['event'][4:]} ({ended[-1].get('reason', '')})" if ended else "running"
    lines = [f"run dir  {job_dir}", f"job      {state}", f"progress {progress_line(progress)}"]
    if progress.steps_per_s:
        lines.append(f"rate     {progress.steps_per_s:.2f} steps/s over the last steps of generation")
    rows = _read_json(job_dir / "agents.json")
    if isinstance(rows, list):
        alive = [r for r in rows if r.get("alive")]
        lines.append(f"nodes    {len(alive)} alive of {len(rows)} registered")
        for row in rows:
            mark = "alive" if row.get("alive") else "gone"
            lines.append(
                f"  node {row.get('node')}: {row.get('host')} {mark} agent pid {row.get('agent_pid')}"
            )
    if isinstance(plan, dict) and isinstance(pipelines, list):
        lines.append(
            f"plan     generation {plan.get('generation')}: {len(pipelines)} pipelines ({plan.get('reason')})"
        )
        for index, pipeline in enumerate(pipelines):
            stages = "  ".join(
                f"node {s['node']}: layers {_layers(list(s['layers']))}" for s in pipeline.get("stages", [])
            )
            lines.append(f"  pipeline {index} ({pipeline.get('microbatches')} microbatches): {stages}")
    else:
        lines.append("plan     unknown (no plan.json yet)")
    recoveries = [r for r in records if r.get("event") == "recovery"][-RECOVERIES_SHOWN:]
    lines += [f"  {recovery_line(r)}" for r in recoveries] if recoveries else ["recoveries none"]
    if recoveries:
        lines.insert(len(lines) - len(recoveries), "recoveries (newest last)")
    return "\n".join(lines) + "\n"
