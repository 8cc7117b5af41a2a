"""The master's live progress bar on a terminal (rich), redrawn in place while log lines scroll above.

Assumptions:
- Only when the master's stdout is a TTY; a log file or pipe keeps the compact progress line every
  ~5% of the steps (``ProgressTail.report``), which is also still logged on a terminal.
- The text of the bar is :func:`~oobleck.runtime.control.progress.progress_bar` (pure, tested); this
  module only draws it. rich's ``Live`` redirects ``sys.stdout``/``sys.stderr`` while it runs; the
  logging handlers that write to the real stderr are pointed at that redirect, so a log line prints
  above the bar instead of tearing it, and are pointed back on :meth:`TerminalBar.close`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
from typing import IO, Any

from oobleck.runtime.control.progress import Progress, progress_bar


class TerminalBar:
    """A one-line live display; ``show`` redraws it, ``close`` leaves the last one on screen."""

    def __init__(self, stream: IO[str]) -> None:
        """Start the live display on ``stream`` (a terminal)."""
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self._lock = threading.Lock()
        self._closed = False
        self._console = Console(file=stream)
        stderr = sys.stderr
        self._live = Live(Text(""), console=self._console, auto_refresh=False, transient=False)
        self._live.start()
        self._moved: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (stderr, sys.__stderr__):
                self._moved.append((handler, handler.stream))
                handler.setStream(sys.stderr)  # NOTE: rich's proxy: lines print above the bar.
        atexit.register(self.close)

    @classmethod
    def open(cls, stream: IO[str]) -> TerminalBar | None:
        """A bar on ``stream`` if it is a terminal, else None (logs keep the compact line)."""
        try:
            return cls(stream) if stream.isatty() else None
        except (OSError, ValueError):
            return None

    def show(self, progress: Progress) -> None:
        """Redraw the bar for ``progress`` (any thread)."""
        with self._lock:
            if self._closed:
                return
            # NOTE: a terminal that went away (closed, hung up) must not end the master's progress thread.
            with contextlib.suppress(OSError, ValueError):
                self._live.update(self._text(progress_bar(progress, self._console.width)), refresh=True)

    def close(self) -> None:
        """Stop drawing, restore the log handlers' streams; never raises, idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for handler, stream in self._moved:
                handler.setStream(stream)
            with contextlib.suppress(OSError, ValueError):
                self._live.stop()
