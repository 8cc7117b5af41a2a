"""Following a growing JSON-lines file by offset: the rows appended since the last read.

Why one reader: the master follows its job's ``metrics.jsonl`` twice (progress lines and the
TensorBoard mirror) while a worker appends to it. Both must take complete lines only (a worker may
be half-way through the last one) and skip a line that is not a JSON object instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlFollower:
    """Hands out the JSON-object rows appended to ``path`` since the previous call."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        """Args:
        path: The file (it may not exist yet).
        from_end: Skip what the file holds now (default: read it from the start).
        """
        self.path = path
        self._offset = 0
        if from_end:
            try:
                self._offset = path.stat().st_size
            except OSError:
                self._offset = 0
        self._partial = b""

    def new_rows(self) -> list[dict[str, Any]]:
        """The complete rows appended since the last call (none while the file cannot be read)."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
