"""Read a recorded run of the real runtime: its per-step rows and its recovery events.

The runtime appends JSON lines to ``<run_dir>/metrics.jsonl``. Three kinds are understood, and
every other line (job start/end, future kinds) is skipped, so an older notebook reads a newer run:

* **step rows** (no ``event`` key, or ``"event": "step"``): ``step``, ``loss``, ``samples``,
  ``tokens``, ``step_s``, ``generation`` and the wall-clock ``t`` at which the step ended;
* **recovery rows** (``"event": "recovery"``): the measured seconds of each phase, named as the
  planning core's :class:`~oobleck.planning.recovery.RecoveryPrediction` names them, as a
  ``"phases_s"`` object (``{"detect": 0.1, ...}``, what the elastic runtime writes; ``"phases"`` is
  accepted too) or as flat ``"detect_s"``-style keys; optional ``t``, ``step``, ``generation``,
  ``lost``, ``joined``, ``restart`` (a checkpoint restart rather than a reconfiguration),
  ``t_failure`` and ``transfer_bytes``;
* **membership rows** (``"event": "membership"``, written by the master): ``generation``,
  ``members``, ``lost``, ``joined``, ``failure_at`` and ``detected_at`` wall-clock times;
* **transfer rows** (``"event": "transfer"``, one per layer copied by a recovery): ``generation``,
  ``layer``, ``src`` and ``dst`` nodes, ``bytes`` and ``ms`` (measured on the receiver).

A recovery row's phases are the reporting worker's own: when it received no layer, its
``transfer_state`` is near zero and the copies it waited for land in its ``first_step``. When the run
wrote transfer rows for that generation, the job-wide transfer phase, the slowest receiver's
(the largest ``ms``: a receiver's later layer includes its earlier ones), replaces it, and the time it
adds is taken off ``first_step``: the recovery's total is what the reporter measured either way.

``plan.json`` (the initial plan) and ``kill.json`` (written by :mod:`oobleck.viz.live` when it kills
a node) are read when present.

Assumptions:
    * Times ``t``, ``failure_at`` and ``detected_at`` are ``time.time()`` values of one machine (or
      of clocks synchronised well below a step time).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError

PHASES: tuple[str, ...] = ("detect", "plan", "rebuild_groups", "transfer_state", "first_step")
"""Recovery phases in the order they happen; the keys of ``RecoveryPrediction.to_dict()``."""

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """One completed training step as the runtime measured it."""

    step: int
    generation: int
    loss: float
    samples: int
    tokens: int
    step_s: float
    t: float
    """Wall-clock time the step ended (``nan`` if the row has none)."""

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.step_s if self.step_s > 0 else math.nan


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryRecord:
    """One measured recovery: seconds per phase, and what it recovered from."""

    phases_s: dict[str, float]
    """Phase name -> measured seconds; only phases the row reports."""
    t: float = math.nan
    step: int | None = None
    """The step that was interrupted and redone."""
    generation: int | None = None
    lost: tuple[int, ...] = ()
    joined: tuple[int, ...] = ()
    restart: bool = False
    """Whether the runtime fell back to a checkpoint restart instead of reconfiguring."""
    t_failure: float = math.nan
    """Wall-clock estimate of when the failure happened."""
    transfer_bytes: int = 0
    """Layer-state bytes the transfer plan moved."""

    @property
    def total_s(self) -> float:
        return sum(self.phases_s.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipRecord:
    """One membership generation announced by the master."""

    generation: int
    members: tuple[int, ...]
    """Node ids in the job from this generation on, ascending."""
    lost: tuple[int, ...]
    joined: tuple[int, ...]
    failure_at: float
    """Best estimate of when the failure happened (0 for joins and for the first generation)."""
    detected_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRecord:
    """One layer's state copied between two surviving nodes during a recovery."""

    generation: int
    """The generation the copy prepared (the recovery's new generation)."""
    layer: int
    src: int
    dst: int
    bytes: int
    ms: float
    """Milliseconds from the receiver posting its receives to this layer's arrival."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRun:
    """Everything the notebooks read from one run directory."""

    run_dir: Path
    steps: tuple[StepRecord, ...]
    recoveries: tuple[RecoveryRecord, ...]
    memberships: tuple[MembershipRecord, ...] = ()
    transfers: tuple[TransferRecord, ...] = ()
    """Layer copies, in file order (runs recorded before the runtime wrote them have none)."""
    plan: dict[str, Any] | None = field(default=None)
    """The initial plan (``<run_dir>/plan.json``, ``Plan.to_dict()``), if the run wrote one."""
    killed_at: float | None = None
    """Wall-clock time a node was killed on purpose (``kill.json`` of
    :func:`oobleck.viz.live.record_failure_run`), if the run recorded one."""

    @property
    def start_t(self) -> float:
        """Wall-clock start: the end of the first step minus its duration."""
        first = self.steps[0]
        return first.t - first.step_s

    @property
    def initial_nodes(self) -> tuple[int, ...]:
        """Members of the first generation the master announced.

        Raises:
            ConfigError: the run has no membership rows (it was not run by the elastic master).
        """
        if not self.memberships:
            raise ConfigError(f"{self.run_dir}: no membership rows; record the run with the elastic master")
        return self.memberships[0].members

    @property
    def failures(self) -> tuple[MembershipRecord, ...]:
        """Generations that lost nodes, in order."""
        return tuple(m for m in self.memberships if m.lost)


def load_run(run_dir: str | Path) -> RecordedRun:
    """Parse ``<run_dir>/metrics.jsonl`` (and ``plan.json`` when present).

    Args:
        run_dir: A directory the runtime wrote.

    Returns:
        The run's steps (in file order; a redone step appears once per completion), recoveries
        and membership changes.

    Raises:
        ConfigError: no metrics file, a line that is not JSON, a row missing a required key, or a
            run without any step rows.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found; pass a run directory the oobleck runtime wrote")
    steps: list[StepRecord] = []
    recoveries: list[RecoveryRecord] = []
    memberships: list[MembershipRecord] = []
    transfers: list[TransferRecord] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
        event = row.get("event", "step")
        try:
            if event == "step":
                steps.append(_step(row))
            elif event == "recovery":
                recoveries.append(_recovery(row))
            elif event == "membership":
                memberships.append(_membership(row))
            elif event == "transfer":
                transfers.append(_transfer(row))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: malformed {event} row ({error!r}): {line[:120]}") from None
    if not steps:
        raise ConfigError(f"{path}: no step rows; was the run interrupted before its first step?")
    plan_path, kill_path = run_dir / "plan.json", run_dir / "kill.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    killed_at = float(json.loads(kill_path.read_text())["t"]) if kill_path.is_file() else None
    return RecordedRun(
        run_dir=run_dir,
        steps=tuple(steps),
        recoveries=tuple(_job_wide(recovery, transfers) for recovery in recoveries),
        memberships=tuple(memberships),
        transfers=tuple(transfers),
        plan=plan,
        killed_at=killed_at,
    )


def _step(row: dict[str, Any]) -> StepRecord:
    return StepRecord(
        step=int(row["step"]),
        generation=int(row.get("generation", 0)),
        loss=float(row["loss"]),
        samples=int(row["samples"]),
        tokens=int(row.get("tokens", 0)),
        step_s=float(row["step_s"]),
        t=float(row.get("t", math.nan)),
    )


def _recovery(row: dict[str, Any]) -> RecoveryRecord:
    nested = row.get("phases_s", row.get("phases"))
    if nested is not None:
        phases = {name: float(nested[name]) for name in PHASES if name in nested}
    else:
        phases = {name: float(row[f"{name}_s"]) for name in PHASES if f"{name}_s" in row}
    if not phases:
        raise ValueError(f"no phase among {', '.join(PHASES)}")
    return RecoveryRecord(
        phases_s=phases,
        t=float(row.get("t", math.nan)),
        step=int(row["step"]) if "step" in row else None,
        generation=int(row["generation"]) if "generation" in row else None,
        lost=tuple(int(node) for node in row.get("lost", ())),
        joined=tuple(int(node) for node in row.get("joined", ())),
        restart=bool(row.get("restart", False)),
        t_failure=float(row.get("t_failure", math.nan)),
        transfer_bytes=int(row.get("transfer_bytes", 0)),
    )


def _membership(row: dict[str, Any]) -> MembershipRecord:
    return MembershipRecord(
        generation=int(row["generation"]),
        members=tuple(sorted(int(node) for node in row.get("members", ()))),
        lost=tuple(int(node) for node in row.get("lost", ())),
        joined=tuple(int(node) for node in row.get("joined", ())),
        failure_at=float(row.get("failure_at", 0.0)),
        detected_at=float(row.get("detected_at", 0.0)),
    )


def _transfer(row: dict[str, Any]) -> TransferRecord:
    return TransferRecord(
        generation=int(row["generation"]),
        layer=int(row["layer"]),
        src=int(row["src"]),
        dst=int(row["dst"]),
        bytes=int(row["bytes"]),
        ms=float(row["ms"]),
    )


def _job_wide(recovery: RecoveryRecord, transfers: list[TransferRecord]) -> RecoveryRecord:
    """The recovery with its transfer phase as the slowest receiver measured it (see the module)."""
    copies_ms = [t.ms for t in transfers if t.generation == recovery.generation]
    reported_s = recovery.phases_s.get("transfer_state")
    if not copies_ms or reported_s is None:
        return recovery
    slowest_s = max(copies_ms) / 1e3
    shift_s = min(max(0.0, slowest_s - reported_s), recovery.phases_s.get("first_step", 0.0))
    phases = dict(recovery.phases_s)
    phases["transfer_state"] = reported_s + shift_s
    if "first_step" in phases:
        phases["first_step"] -= shift_s
    return dataclasses.replace(recovery, phases_s=phases)
