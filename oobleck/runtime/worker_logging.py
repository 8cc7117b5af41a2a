"""A worker's log lines: a per-rank prefix, and one log file per worker in the run directory.

Assumptions:
- A standalone (torchrun) worker's rank is torchrun's ``RANK`` for its whole life; an elastic
  worker's global rank changes with each generation, so its prefix names the stable
  ``node N local L`` until the runtime reports the generation's rank with :func:`set_rank`.
- Each worker also writes ``<run_dir>/logs/node<N>/rank<L>.log`` (``L`` its ``LOCAL_RANK``: the one
  name that stays the same across generations), so a node's workers no longer share one agent log
  to tell apart; stderr keeps every line too, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

_LABEL = {"rank": "0"}
"""The current prefix label (module state: log records are formatted on any thread)."""
LOG_FORMAT = "%(asctime)s [rank %(oobleck_rank)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    """Stamps each record with the current rank label (``%(oobleck_rank)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.oobleck_rank = _LABEL["rank"]
        return True


def set_rank(rank: int | str) -> None:
    """Name ``rank`` in every later log line of this process (an elastic worker's new generation).

    Args:
        rank: The global rank (or a label) to print after ``[rank``.
    """
    _LABEL["rank"] = str(rank)


def current_rank_label() -> str:
    """The label the next log line of this process is prefixed with."""
    return _LABEL["rank"]


def worker_log_file(run_dir: Path, node: int, local_rank: int) -> Path:
    """Where one worker's log file goes.

    Args:
        run_dir: The job's run directory.
        node: The worker's node id.
        local_rank: Its ``LOCAL_RANK`` on that node.

    Returns:
        ``<run_dir>/logs/node<node>/rank<local_rank>.log``.
    """
    return run_dir / "logs" / f"node{node}" / f"rank{local_rank}.log"


def log_setup(env: Mapping[str, str], run_dir: Path) -> tuple[str, Path | None]:
    """The first prefix label and the log file of the worker that ``env`` describes.

    Args:
        env: The worker's environment: ``OOBLECK_CONTROL``/``OOBLECK_NODE`` (elastic, set by its
            agent) or torchrun's ``RANK``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` (standalone).
        run_dir: The job's run directory.

    Returns:
        ``("node N local L", logs/nodeN/rankL.log)`` for an elastic worker, ``(RANK, logs/node<RANK //
        LOCAL_WORLD_SIZE>/rank<LOCAL_RANK>.log)`` for a standalone one; no file when a variable is not
        a number (the worker then refuses it with a one-line error).
    """
    local = env.get("LOCAL_RANK", "0")
    if env.get("OOBLECK_CONTROL"):
        node = env.get("OOBLECK_NODE", "0")
        label = f"node {node} local {local}"
    else:
        rank, per_node = env.get("RANK", "0"), env.get("LOCAL_WORLD_SIZE", "1")
        label = rank
        if not (rank.isdigit() and per_node.isdigit() and int(per_node) > 0):
            return label, None
        node = str(int(rank) // int(per_node))
    if not (node.isdigit() and local.isdigit()):
        return label, None
    return label, worker_log_file(run_dir, int(node), int(local))


def configure_worker_logging(
    *, label: str, log_file: Path | None, debug: bool = False
) -> logging.Handler | None:
    """Log to stderr (unless the root logger has handlers) and ``log_file``, each line ``[rank <label>]``.

    Args:
        label: The first prefix (``RANK``, or ``node N local L`` before an elastic generation).
        log_file: This worker's own log file (its folder is created), or None for stderr only.
        debug: Show debug lines.

    Returns:
        The file handler (for tests to close), or None.
    """
    set_rank(label)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "oobleck_worker", False)]:
        root.removeHandler(old)  # NOTE: idempotent: a second call (in-process tests) replaces ours.
        old.close()
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    if not root.handlers:
        # NOTE: like ``logging.basicConfig``: a process that already logs somewhere (a test
        # runner's capture) keeps its handlers; the worker's own file is added regardless.
        handlers.append(logging.StreamHandler())
    file_handler = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RankFilter())
        handler.oobleck_worker = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    return file_handler
