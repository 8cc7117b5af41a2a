"""The master's terminal progress bar: its text is a pure function of the progress, drawn only on a TTY."""

from __future__ import annotations

import io
import logging
import os
import select
import sys

import pytest

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


def _drain(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.05)[0]:  # NOTE: writes are done when show/log return.
        out += os.read(fd, 65536)
    return out.decode("utf-8", "replace")


def test_bar_draws_on_a_pty_and_log_lines_print_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a pseudo-terminal the bar is drawn; a log line to stderr meanwhile prints above a redrawn bar."""
    leader, follower = os.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler()  # NOTE: to sys.stderr, as the CLI's logging.basicConfig makes it.
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = TerminalBar.open(stream)
        assert bar is not None
        bar.show(_progress(9))
        assert _drain(leader).count("10/40  25%") >= 1
        logging.getLogger("oobleck.test").warning("recovery gen 1: lost [2]")
        after_log = _drain(leader)
        # NOTE: through rich's proxy the line is printed and the bar drawn again below it; written
        # straight to the terminal it would be glued to the end of the bar, with no redraw after it.
        assert after_log.index("recovery gen 1: lost [2]") < after_log.rindex("10/40  25%"), after_log
        bar.show(_progress(19))
        bar.close()
        bar.close()
        assert handler.stream is stream  # NOTE: handed back after close.
        assert "20/40  50%" in _drain(leader)
    finally:
        root.removeHandler(handler)
        stream.close()
        os.close(leader)


def test_master_on_a_terminal_draws_the_bar_of_its_job(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A master whose stdout is a terminal redraws the bar from its job's metrics.jsonl."""
    import json

    from oobleck.runtime.control import master as master_module
    from oobleck.runtime.control.jobspec import JobSpec
    from oobleck.runtime.control.master_config import MasterConfig
    from tests.unit.runtime.control_setup import TINY_JOB, TOKEN

    leader, follower = os.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(master_module, "PROGRESS_EVERY_S", 0.05)
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB)
    master = master_module.Master(MasterConfig(run_dir=tmp_path / "run", heartbeat_interval_s=0.2), TOKEN)
    try:
        master.submit(JobSpec.from_path(job), expected_agents=1)
        row = {"step": 0, "generation": 0, "loss": 5.5, "samples": 4, "t": 1.0}
        (master.job_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        text = ""
        for _ in range(40):
            text += _drain(leader)
            if "1/2  50%" in text:
                break
        assert "1/2  50%  loss 5.5000" in text, text
    finally:
        master.close()
        stream.close()
        os.close(leader)
