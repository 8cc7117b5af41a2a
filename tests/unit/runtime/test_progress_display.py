"""The master's terminal progress bar: its text is a pure function of the progress, drawn only on a TTY."""

from __future__ import annotations

import io
import logging
import os
import select

from oobleck.runtime.control.progress import BAR_CELLS, Progress, progress_bar
from oobleck.runtime.control.progress_display import TerminalBar


def _progress(step: int, total: int = 40) -> Progress:
    return Progress(step, total, 5.2103, 2.0, 18.25, 4, 1, 2)


def test_bar_fills_in_proportion_and_carries_the_progress_fields() -> None:
    """Step 10 of 40 fills a quarter of the cells and shows loss, samples/s, nodes, pipelines and ETA."""
    line = progress_bar(_progress(9))
    cells = line[1 : 1 + BAR_CELLS]
    assert cells.count("█") == BAR_CELLS // 4 and cells.count("░") == BAR_CELLS - BAR_CELLS // 4
    assert line.startswith(f"[{cells}] 10/40  25%  loss 5.2103  18.2 samples/s  4 nodes  2 pipelines  gen 1")
    assert line.endswith("ETA 15s")


def test_bar_before_the_first_step_and_at_the_end() -> None:
    """No step yet says so; the last step fills every cell at 100%."""
    assert progress_bar(_progress(-1)).endswith("0/40   0%  waiting for the first step")
    assert progress_bar(_progress(39)).startswith("[" + "█" * BAR_CELLS + "] 40/40 100%")


def test_bar_is_cut_to_the_terminal_width() -> None:
    """A narrow terminal gets a line of exactly its width, ending in an ellipsis (it never wraps)."""
    line = progress_bar(_progress(9), width=40)
    assert len(line) == 40 and line.endswith("…")


def test_no_bar_off_a_terminal() -> None:
    """A pipe or file (here a StringIO) gets no bar: logs keep the compact line."""
    assert TerminalBar.open(io.StringIO()) is None


def test_bar_draws_on_a_pty_and_log_lines_print_above_it() -> None:
    """On a pseudo-terminal the bar is drawn, and a log line written meanwhile reaches the terminal whole."""
    leader, follower = os.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = TerminalBar.open(stream)
        assert bar is not None
        bar.show(_progress(9))
        logging.getLogger("oobleck.test").warning("recovery gen 1: lost [2]")
        bar.show(_progress(19))
        bar.close()
        bar.close()
        assert handler.stream is stream  # NOTE: handed back after close.
        stream.flush()
        out = b""
        while select.select([leader], [], [], 0.2)[0]:
            out += os.read(leader, 65536)
        text = out.decode("utf-8", "replace")
        assert "10/40  25%" in text and "20/40  50%" in text and "recovery gen 1: lost [2]" in text, text
    finally:
        root.removeHandler(handler)
        stream.close()
        os.close(leader)
