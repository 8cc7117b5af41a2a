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


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (atomic for small lines under O_APPEND).

    Args:
        path: The JSONL file (created if missing).
        record: The record.
    """
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
