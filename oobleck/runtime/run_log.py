"""What one worker writes into the run directory: step rows, recovery records, its sample ledger,
and the error file its agent reports when it dies.

``metrics.jsonl`` gets one row per completed step and, after a membership change, one ``recovery``
row whose ``phases_s`` use the planning core's phase names (detect, plan, rebuild_groups,
transfer_state, first_step), so predicted and measured recoveries line up in the notebooks. Its
``plan`` runs from the notice to the new plan, which includes joining the generation's world (the
rendezvous waits for the last member while the state records arrive, ``Engine.join_world``);
``rebuild_groups`` is then the plan's subgroups. A recovery that copied layers also leaves one
``transfer`` row per copied layer::

    {"event": "transfer", "generation": g, "layer": l, "src": node, "dst": node, "bytes": n, "ms": t}

Assumptions:
- One worker (the reporter: rank 0 of the current generation) writes step and recovery rows; a
  recovery is complete only when its first step is, so the record waits for that step. Its
  job-wide transfer figures (``transfer_bytes``, ``layers_copied``, ``transfers``, ``pipelines``)
  come from the transfer plan and the new plan, which every rank holds (the planner's bytes of a
  layer are its fp32 parameters and moments: what a receiver counts).
- ``transfer`` rows are written by the receiving worker, as soon as its copies have landed: its
  wait ends when the bytes arrived, so it measures the whole copy, and a copy whose sender died
  never arrives and leaves no row. Several workers append to ``metrics.jsonl`` then; each row is
  one ``write`` under ``O_APPEND`` (:func:`append_jsonl`), so rows never interleave.
- Every first-stage worker writes its own ledger file (``ledger/node<n>.jsonl``): which sample ids
  its pipeline consumed in which step, so a test can prove no sample was skipped or repeated. A
  step's samples are the lines of the newest generation that logged it: a worker that finished its
  part of a step and then died leaves a line, and when the survivors redo that step in the next
  generation, their lines supersede it.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oobleck.planning.plan import Plan, Transfer
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.records import append_jsonl, write_json_atomic

if TYPE_CHECKING:
    # NOTE: only for the annotation: the agent imports this module and must not pull in torch.
    from oobleck.runtime.engine.records import LayerCopy

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
            timing: Engine-measured phases (``rebuild_groups_s``, ``transfer_state_s``) and the
                fields of :func:`transfer_fields`; its ``copies`` (this worker's received layers)
                are written at once as ``transfer`` rows, the rest waits for the first step.
        """
        timing = dict(timing)
        now = time.time()
        for copy in timing.pop("copies", ()):
            row = {"event": "transfer", "generation": target.generation, **copy}
            append_jsonl(self.run_dir / METRICS_FILE, {**row, "t": now, "node": self.node})
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

    def regroup_started(self) -> None:
        """Drop a recovery record still pending: this worker ran no step of its generation.

        That generation's rank 0 wrote the record with its first step, or no step ran in it.
        Kept, it would be written by the step this worker logs next, which may belong to the
        generation before the new one (a rank finishing a step from a survivor's result) and be
        logged as the new generation's rank 0: the same recovery twice (seen in CI).
        """
        self._recovery = None

    def plan_adopted(self, target: Membership, plan: Plan) -> None:
        """Write the plan generation ``target`` runs: ``plans/gen<G>.json`` and ``plan.json`` (the newest).

        Written by the reporter once per generation (``oobleck status`` shows it); each file is
        replaced atomically, so a reader never sees half of one.
        """
        record = {
            "generation": target.generation,
            "members": list(target.members),
            "reason": target.reason,
            "t": time.time(),
            "pipelines": pipeline_layouts(plan),
            "plan": plan.to_dict(),
        }
        folder = self.run_dir / "plans"
        folder.mkdir(exist_ok=True)
        write_json_atomic(folder / f"gen{target.generation}.json", record)
        write_json_atomic(self.run_dir / "plan.json", record)

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
        rows = [{**record, "t": now}]
        if recovery is not None:
            recovery["t_first_step"] = now
            recovery["phases_s"] = {
                "detect": max(0.0, recovery["t_notice"] - recovery["t_failure"]),
                "plan": max(0.0, recovery["t_plan_ready"] - recovery["t_notice"]),
                "rebuild_groups": recovery.get("rebuild_groups_s", 0.0),
                "transfer_state": recovery.get("transfer_state_s", 0.0),
                "first_step": record["step_s"],
            }
            rows.append({**recovery, "t": now, "step": record["step"]})
        # NOTE: one write: a reporter killed right after its step row (the moment a test's or a
        # user's kill often lands) used to take the recovery record with it (seen in CI).
        append_jsonl(self.run_dir / METRICS_FILE, *rows)


def transfer_fields(plan: Plan, transfers: Sequence[Transfer], copies: Sequence[LayerCopy]) -> dict[str, Any]:
    """The transfer figures of a recovery record, job-wide, plus this worker's received copies.

    Pure: every worker computes the same job-wide part from the same plan and transfer plan.

    Args:
        plan: The plan after the recovery.
        transfers: Its transfer plan (empty for a restart from a checkpoint).
        copies: The layers this worker received (measured by the engine).

    Returns:
        ``transfer_bytes`` (sum over every copy), ``layers_copied``, ``transfers`` (each planned
        copy: ``layer``, ``src``, ``dst``, ``bytes``), ``pipelines`` (:func:`pipeline_layouts`) and
        ``copies`` (for :meth:`RunLog.recovery_started`, which writes them as ``transfer`` rows).
    """
    ordered = sorted(transfers, key=lambda t: (t.layer, t.dst_node))
    return {
        "transfer_bytes": sum(t.bytes for t in ordered),
        "layers_copied": len(ordered),
        "transfers": [
            {"layer": t.layer, "src": t.src_node, "dst": t.dst_node, "bytes": t.bytes} for t in ordered
        ],
        "pipelines": pipeline_layouts(plan),
        "copies": [copy.to_dict() for copy in copies],
    }


def pipeline_layouts(plan: Plan) -> list[dict[str, Any]]:
    """Each pipeline's template as plain data: its nodes, and each stage's node and layers.

    Args:
        plan: A plan.

    Returns:
        Per pipeline ``{"nodes": [...], "microbatches": m, "stages": [{"node": n, "layers": [...]}]}``.
    """
    return [
        {
            "nodes": list(pipeline.nodes),
            "microbatches": pipeline.microbatches,
            "stages": [
                {"node": pipeline.nodes[stage.node], "layers": list(stage.layers)}
                for stage in pipeline.template.stages
            ],
        }
        for pipeline in plan.pipelines
    ]


def write_error_file(exc: BaseException) -> None:
    """Write ``exc`` and the traceback being handled to the agent's error file, if it set one."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    data = {"message": f"{exc.__class__.__name__}: {exc}", "timestamp": time.time()}
    Path(path).write_text(json.dumps({**data, "traceback": traceback.format_exc()}), encoding="utf-8")
