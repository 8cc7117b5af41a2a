"""What one worker writes into the run directory: step rows, recovery records, its sample ledger,
and the error file its agent reports when it dies.

``metrics.jsonl`` gets one row per completed step and, after a membership change, one ``recovery``
row whose ``phases_s`` use the planning core's phase names (detect, plan, rebuild_groups,
transfer_state, first_step), so predicted and measured recoveries line up in the notebooks.

Assumptions:
- Exactly one worker (the reporter: rank 0 of the current generation) writes ``metrics.jsonl``;
  a recovery is complete only when its first step is, so the record waits for that step.
- Every first-stage worker writes its own ledger file (``ledger/node<n>.jsonl``): which sample ids
  its pipeline consumed in which step, so a test can prove no sample was skipped or repeated.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.records import append_jsonl

METRICS_FILE = "metrics.jsonl"
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
"""Where the agent wants this worker's error (torchrun's variable, so tools that read it work)."""


class RunLog:
    """One worker's writer of step rows, recovery records and ledger lines."""

    def __init__(self, run_dir: Path, *, node: int, ledger: bool) -> None:
        """Start with no recovery pending.

        Args:
            run_dir: The job's run directory.
            node: This worker's node id (names its ledger file).
            ledger: Whether the job asked for a sample ledger.
        """
        self.run_dir, self.node, self.ledger = run_dir, node, ledger
        self._recovery: dict[str, Any] | None = None

    def recovery_started(
        self, target: Membership, *, noticed: float, plan_ready: float, timing: dict[str, Any]
    ) -> None:
        """Remember a regroup's timestamps; the record is written with the first step after it.

        Args:
            target: The generation just adopted.
            noticed: Wall-clock time this worker received the notice.
            plan_ready: Wall-clock time the new plan was computed.
            timing: Engine-measured phases (``rebuild_groups_s``, ``transfer_state_s``) and bytes.
        """
        self._recovery = {
            "event": "recovery",
            "generation": target.generation,
            "lost": list(target.lost),
            "joined": list(target.joined),
            "reason": target.reason,
            "t_failure": target.failure_at or target.detected_at,
            "t_detected": target.detected_at,
            "t_notice": noticed,
            "t_plan_ready": plan_ready,
            **timing,
        }

    def step_done(
        self,
        record: dict[str, Any],
        *,
        generation: int,
        pipeline: int | None,
        sample_ids: tuple[int, ...],
        reporter: bool,
    ) -> None:
        """Write a completed step (and a pending recovery record) where this worker's role says.

        Args:
            record: The step's metrics (``step``, ``loss``, ``step_s``, ...).
            generation: The generation the step ran in.
            pipeline: This worker's pipeline, if it holds a stage.
            sample_ids: Samples this worker's pipeline consumed (first stages only).
            reporter: Whether this worker writes ``metrics.jsonl``.
        """
        now = time.time()
        if self.ledger and sample_ids:
            folder = self.run_dir / "ledger"
            folder.mkdir(exist_ok=True)
            entry = {"step": record["step"], "generation": generation, "pipeline": pipeline}
            append_jsonl(folder / f"node{self.node}.jsonl", {**entry, "sample_ids": list(sample_ids)})
        recovery, self._recovery = self._recovery, None
        if not reporter:
            return
        append_jsonl(self.run_dir / METRICS_FILE, {**record, "t": now})
        if recovery is not None:
            recovery["t_first_step"] = now
            recovery["phases_s"] = {
                "detect": max(0.0, recovery["t_notice"] - recovery["t_failure"]),
                "plan": max(0.0, recovery["t_plan_ready"] - recovery["t_notice"]),
                "rebuild_groups": recovery.get("rebuild_groups_s", 0.0),
                "transfer_state": recovery.get("transfer_state_s", 0.0),
                "first_step": record["step_s"],
            }
            append_jsonl(self.run_dir / METRICS_FILE, {**recovery, "t": now, "step": record["step"]})


def write_error_file(exc: BaseException) -> None:
    """Write ``exc`` and the traceback being handled to the agent's error file, if it set one."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    data = {"message": f"{exc.__class__.__name__}: {exc}", "timestamp": time.time()}
    Path(path).write_text(json.dumps({**data, "traceback": traceback.format_exc()}), encoding="utf-8")
