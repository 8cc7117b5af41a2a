"""Run-directory records: atomic JSON files and append-only JSONL event logs.

Assumptions:
- Several processes (master, every worker) append to the same ``metrics.jsonl``; one ``write`` of
  one line under ``O_APPEND`` is atomic for lines this small, so lines never interleave.
- JSON snapshots (``agents.json``, ``master.json``) are replaced by rename, never edited in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON via a temporary file and a rename (readers never see half)."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def append_jsonl(path: Path, *records: dict[str, Any]) -> None:
    """Append one JSON line per record, all with a single ``write``.

    One ``write`` is atomic for small lines under O_APPEND, and a process killed around it leaves
    all of its lines or none: rows that belong together (a step and the recovery it completes)
    are never split by a kill between them.

    Args:
        path: The JSONL file (created if missing).
        records: The records, in order.
    """
    data = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
