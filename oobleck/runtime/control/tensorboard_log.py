"""TensorBoard scalars of a job (``logging: {tensorboard: true}``), mirrored from its ``metrics.jsonl``.

Assumptions:
- The master writes them: it is the one process that writes ``metrics.jsonl`` for the whole job
  (its membership and outcome rows), while the reporter worker that writes step rows changes with
  the generation and may be killed mid-step. The master follows the file by offset, so TensorBoard
  shows exactly the numbers of ``metrics.jsonl``, once each, whichever worker wrote them.
- Only complete lines are mirrored (a writer may be half-way through the last one), from the end
  the file had when the job was submitted.
- A master resumed with ``--resume`` does not mirror (it never saw the job's submission).
- ``tensorboard`` is an optional extra (``pip install 'oobleck[tensorboard]'``); it is imported only
  when a job asks for it, and :func:`check_tensorboard` refuses such a job before any agent starts.
  Its own protobuf writer is used, so the master stays torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.runtime.control.jsonl_follow import JsonlFollower

TENSORBOARD_DIR = "tensorboard"
"""Folder of the event files, under the job's run dir."""

INSTALL_HINT = "pip install 'oobleck[tensorboard]'"

STEP_SCALARS = ("loss", "lr", "grad_norm", "step_s")
"""Fields of a step row written as they are (tag = field name)."""


def check_tensorboard(logging_tensorboard: bool, source: str) -> None:
    """Refuse ``logging.tensorboard: true`` when the ``tensorboard`` package is not installed.

    Args:
        logging_tensorboard: The job's ``logging.tensorboard``.
        source: The job file, for the message.

    Raises:
        ConfigError: The key is on and the package is missing (one line with the fix).
    """
    if not logging_tensorboard:
        return
    try:
        # NOTE: imported here, before the master takes its lock to start the job (the first import
        # takes seconds on a loaded machine); a broken install is refused the same way.
        importlib.import_module("tensorboard")
        importlib.import_module("tensorboard.summary.writer.event_file_writer")
    except ImportError:
        raise ConfigError(
            f"{source}: logging.tensorboard: true needs the tensorboard package, which is not installed; "
            f"run {INSTALL_HINT} or set logging.tensorboard: false"
        ) from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def scalars_of(row: dict[str, Any]) -> list[tuple[str, int, float]]:
    """The TensorBoard scalars of one ``metrics.jsonl`` row: ``(tag, step, value)``.

    Step rows give ``loss``, ``lr``, ``grad_norm``, ``step_s`` and ``samples_per_s``; a ``recovery``
    row gives ``recovery/total_s``, one ``recovery/<phase>_s`` per phase, ``recovery/lost_nodes``,
    ``recovery/joined_nodes`` and ``recovery/layers_copied`` at the step it finished with. Other
    rows (memberships, transfers, the outcome) and ill-typed fields give nothing.

    Args:
        row: One parsed row.

    Returns:
        Scalars in a fixed order.
    """
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return []
    out: list[tuple[str, int, float]] = []
    if "event" not in row:
        for name in STEP_SCALARS:
            value = _number(row.get(name))
            if value is not None:
                out.append((name, step, value))
        samples, step_s = _number(row.get("samples")), _number(row.get("step_s"))
        if samples is not None and step_s:
            out.append(("samples_per_s", step, samples / step_s))
        return out
    if row["event"] != "recovery":
        return []
    phases = row.get("phases_s")
    values = {str(name): _number(v) for name, v in phases.items()} if isinstance(phases, dict) else {}
    checked = {name: v for name, v in values.items() if v is not None}
    out.append(("recovery/total_s", step, sum(checked.values())))
    out += [(f"recovery/{name}_s", step, value) for name, value in checked.items()]
    for key in ("lost", "joined"):
        if isinstance(row.get(key), list):
            out.append((f"recovery/{key}_nodes", step, float(len(row[key]))))
    copied = _number(row.get("layers_copied"))
    if copied is not None:
        out.append(("recovery/layers_copied", step, copied))
    return out


class TensorBoardMirror:
    """Follows a job's ``metrics.jsonl`` and appends its scalars to ``<job_dir>/tensorboard/``."""

    def __init__(self, job_dir: Path) -> None:
        """Open the event file (the folder is created).

        Args:
            job_dir: The job's run dir.

        Raises:
            ImportError: ``tensorboard`` is not installed (:func:`check_tensorboard` comes first).
        """
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.path = job_dir / "metrics.jsonl"
        self.logdir = job_dir / TENSORBOARD_DIR
        self._writer = EventFileWriter(str(self.logdir))
        # NOTE: from the current end: a re-run on the same run dir appends to metrics.jsonl, and its
        # earlier rows were mirrored by the run that wrote them.
        self._rows = JsonlFollower(self.path, from_end=True)
        self._lock = threading.Lock()
        self._closed = False

    def poll(self) -> int:
        """Mirror the rows appended since the last call; returns how many scalars were written."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        with self._lock:
            if self._closed:
                return 0
            written = 0
            for row in self._rows.new_rows():
                wall_s = _number(row.get("t")) or 0.0
                for tag, step, value in scalars_of(row):
                    summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
                    self._writer.add_event(Event(wall_time=wall_s, step=step, summary=summary))
                    written += 1
            if written:
                self._writer.flush()
            return written

    def close(self) -> None:
        """Mirror what is left, then close the event file; never raises an OSError, idempotent."""
        self.poll()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._writer.close()


def open_mirror(enabled: bool, job_dir: Path) -> TensorBoardMirror | None:
    """A mirror for a job that asked for TensorBoard (None otherwise)."""
    return TensorBoardMirror(job_dir) if enabled else None
