"""A job's progress from its ``metrics.jsonl`` rows: the compact progress line and recovery summaries.

Pure functions of the rows (``records`` as parsed JSON); the master, ``oobleck submit --wait`` and
``oobleck status`` read the file and print what these return.

Assumptions:
- Step rows are the reporter's (``step``, ``loss``, ``samples``, ``t``, no ``event``); membership
  rows are the master's; ``recovery`` rows are the reporter's, written with the first step after a
  regroup (their ``phases_s`` and ``pipelines`` say what it cost and what it built).
- The rate is measured over the last :data:`RATE_WINDOW` steps of the newest generation only, so a
  recovery's pause does not drag the rate (and the ETA) for the rest of the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.runtime.control.jsonl_follow import JsonlFollower

RATE_WINDOW = 10
"""Steps the step rate is averaged over."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a job stands."""

    step: int
    """Last completed step (-1: none yet)."""
    total_steps: int
    loss: float | None
    steps_per_s: float | None
    samples_per_s: float | None
    nodes: int
    """Members of the newest generation."""
    generation: int
    pipelines: int | None
    """Pipelines of the newest plan seen (None until a plan or recovery row says)."""

    @property
    def eta_s(self) -> float | None:
        """Seconds to the last step at the current rate."""
        if not self.steps_per_s:
            return None
        return max(0, self.total_steps - 1 - self.step) / self.steps_per_s


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (a half-written last line is skipped); [] when missing."""
    return JsonlFollower(path).new_rows()


def summarize(records: list[dict[str, Any]], total_steps: int, pipelines: int | None = None) -> Progress:
    """The progress the rows show.

    Args:
        records: ``metrics.jsonl`` rows in file order.
        total_steps: The job's ``steps``.
        pipelines: Pipelines of the current plan, when known from ``plan.json`` (else from the rows).

    Returns:
        The newest step, loss, rates, members and pipelines.
    """
    steps = [r for r in records if "event" not in r and isinstance(r.get("step"), int) and "loss" in r]
    members = [r for r in records if r.get("event") == "membership"]
    generation = int(members[-1]["generation"]) if members else 0
    nodes = len(members[-1].get("members", ())) if members else 0
    if pipelines is None:
        recoveries = [
            r for r in records if r.get("event") == "recovery" and isinstance(r.get("pipelines"), list)
        ]
        if recoveries and int(recoveries[-1].get("generation", -1)) == generation:
            pipelines = len(recoveries[-1]["pipelines"])
    if not steps:
        return Progress(-1, total_steps, None, None, None, nodes, generation, pipelines)
    last = steps[-1]
    window = [r for r in steps if r.get("generation") == last.get("generation")][-RATE_WINDOW:]
    steps_per_s = samples_per_s = None
    if len(window) >= 2:
        span_s = float(window[-1]["t"]) - float(window[0]["t"])
        if span_s > 0:
            steps_per_s = (len(window) - 1) / span_s
            samples_per_s = sum(float(r.get("samples", 0)) for r in window[1:]) / span_s
    return Progress(
        int(last["step"]),
        total_steps,
        float(last["loss"]),
        steps_per_s,
        samples_per_s,
        nodes,
        generation,
        pipelines,
    )


def _duration(value_s: float) -> str:
    seconds = round(value_s)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(progress: Progress) -> str:
    """``step 12/40  loss 5.2103  18.3 samples/s  4 nodes  2 pipelines  gen 1  ETA 1m32s``."""
    parts = [f"step {progress.step + 1}/{progress.total_steps}"]
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.samples_per_s is not None:
        parts.append(f"{progress.samples_per_s:.1f} samples/s")
    parts.append(f"{progress.nodes} nodes")
    if progress.pipelines is not None:
        parts.append(f"{progress.pipelines} pipelines")
    parts.append(f"gen {progress.generation}")
    eta = progress.eta_s
    parts.append(f"ETA {_duration(eta)}" if eta is not None else "ETA ?")
    return "  ".join(parts)


BAR_CELLS = 24
"""Cells of the progress bar (each a full or an empty block)."""


def progress_bar(progress: Progress, width: int = 120) -> str:
    """The terminal's one-line bar: ``[█████░░░] 12/40  30%`` then the fields of :func:`progress_line`.

    Pure (what a master shows on a TTY, redrawn in place); a log keeps :func:`progress_line`.

    Args:
        progress: Where the job stands.
        width: Terminal columns; the line is cut to fit (never wraps, so it redraws in place).

    Returns:
        The bar line (``waiting for the first step`` before any step).
    """
    total = max(1, progress.total_steps)
    done = min(total, progress.step + 1)
    filled = done * BAR_CELLS // total
    bar = "█" * filled + "░" * (BAR_CELLS - filled)
    head = f"[{bar}] {done}/{progress.total_steps} {100 * done // total:3d}%"
    if progress.step < 0:
        head += "  waiting for the first step"
    else:
        fields = progress_line(progress).split("  ", 1)
        head += "  " + fields[1] if len(fields) > 1 else ""
    return head if len(head) <= width else head[: max(0, width - 1)] + "…"


def recovery_line(row: dict[str, Any]) -> str:
    """One line per recovery row: generation, what changed, how long each phase took.

    ``recovery gen 1: lost [2] joined []: 3.41 s (detect 1.52, plan 0.10, rebuild_groups 0.80, ...)``
    """
    phases = row.get("phases_s") or {}
    total = sum(float(v) for v in phases.values())
    detail = ", ".join(f"{name} {float(value):.2f}" for name, value in phases.items())
    moved = f"; {row['layers_copied']} layers copied" if row.get("layers_copied") else ""
    return (
        f"recovery gen {row.get('generation')}: lost {row.get('lost', [])} joined {row.get('joined', [])}: "
        f"{total:.2f} s ({detail}){moved}"
    )


class ProgressTail:
    """Follows a growing ``metrics.jsonl`` by offset, keeping only what :func:`summarize` needs.

    Memory stays bounded for any job length: the membership rows (one per generation), the last
    ``2 * RATE_WINDOW`` step rows and the recovery rows not yet handed out.
    """

    def __init__(self, path: Path) -> None:
        """Args:
        path: The job's ``metrics.jsonl`` (may not exist yet).
        """
        self.path = path
        self._rows = JsonlFollower(path)
        self.memberships: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.recoveries: list[dict[str, Any]] = []
        self._new_recoveries: list[dict[str, Any]] = []
        self._reported_step = -1

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns the recovery rows among it."""
        for row in self._rows.new_rows():
            if row.get("event") == "membership":
                self.memberships.append(row)
            elif row.get("event") == "recovery":
                self.recoveries = [*self.recoveries[-2:], row]
                self._new_recoveries.append(row)
            elif "event" not in row and "loss" in row:
                self.steps = [*self.steps[-2 * RATE_WINDOW + 1 :], row]
        new, self._new_recoveries = self._new_recoveries, []
        return new

    def summary(self, total_steps: int) -> Progress:
        """:func:`summarize` of the rows kept (pipelines from the newest ``plan.json`` beside them)."""
        rows = [*self.memberships, *self.recoveries, *self.steps]
        return summarize(rows, total_steps, plan_pipelines(self.path.parent))

    def report(self, total_steps: int, every_steps: int) -> list[str]:
        """The lines to print now: one per new recovery, and a progress line every ``every_steps`` steps.

        Args:
            total_steps: The job's ``steps``.
            every_steps: Steps between two progress lines (the last step always gets one).

        Returns:
            Lines (maybe none) since the last call.
        """
        lines = [recovery_line(row) for row in self.poll()]
        progress = self.summary(total_steps)
        last = self._reported_step
        due = progress.step >= 0 and (
            progress.step - last >= every_steps
            or (progress.step == total_steps - 1 and last != progress.step)
        )
        if due:
            self._reported_step = progress.step
            lines.append(progress_line(progress))
        return lines


def plan_pipelines(run_dir: Path) -> int | None:
    """Pipelines of the plan the reporter wrote last (``plan.json`` with a generation), or None."""
    try:
        plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(plan, dict) or "generation" not in plan or not isinstance(plan.get("pipelines"), list):
        return None
    return len(plan["pipelines"])
