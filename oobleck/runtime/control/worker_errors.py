"""Reading a worker's error file: what the agent reports to the master when a worker exits.

A worker writes ``TORCHELASTIC_ERROR_FILE`` (torch's ``@record`` layout, ``{"message": {"message",
"extraInfo": {"timestamp"}}}``) or our flat ``{"message", "timestamp"}``; either is summarised the same
way, so the master can name the first failure of a job whichever wrote it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def read_error_file(path: Path, code: int) -> dict[str, Any] | None:
    """Summarise a worker's error file (``TORCHELASTIC_ERROR_FILE`` layout or ours).

    Args:
        path: The error file the worker was told to write.
        code: Its exit status (negative: killed by that signal).

    Returns:
        ``{"message", "timestamp"}``, or None for a clean exit without a file.
    """
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = {}
        message = data.get("message", "")
        if isinstance(message, dict):  # torch's @record layout
            extra = message.get("extraInfo", {})
            return {
                "message": str(message.get("message", ""))[:2000],
                "timestamp": float(extra.get("timestamp", path.stat().st_mtime)),
            }
        return {
            "message": str(message)[:2000],
            "timestamp": float(data.get("timestamp", path.stat().st_mtime)),
        }
    if code == 0:
        return None
    what = f"killed by signal {-code}" if code < 0 else f"exited with code {code} (no error file)"
    return {"message": f"worker {what}", "timestamp": time.time()}
