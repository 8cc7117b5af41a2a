"""The torchft peer kills its victim only once every worker has trained (none left out of the quorum)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from benchmarks import torchft_peer


def _rows(folder: Path, name: str, steps: range) -> None:
    lines = [json.dumps({"step": step, "loss": 1.0}) for step in steps]
    (folder / f"rows-{name}.jsonl").write_text("\n".join(lines) + "\n")


def test_the_step_a_kill_waits_for_is_the_slowest_workers(tmp_path: Path) -> None:
    """A group still starting (no rows) holds the kill back; a group that healed in late counts from
    the step it joined at."""
    _rows(tmp_path, "g0s0", range(13))
    assert torchft_peer._last_step(tmp_path, ["g0s0", "g1s0"]) == -1
    _rows(tmp_path, "g1s0", range(5, 10))
    assert torchft_peer._last_step(tmp_path, ["g0s0", "g1s0"]) == 9
    (tmp_path / "rows-g1s0.jsonl").write_text(json.dumps({"step": 12}) + '\n{"step": 1')  # NOTE: half a line.
    assert torchft_peer._last_step(tmp_path, ["g0s0", "g1s0"]) == 12


def test_workers_start_training_together_or_not_at_all(tmp_path: Path) -> None:
    """A worker waits for every worker's Manager before its first quorum; a missing one is an error."""
    worker = threading.Thread(target=torchft_peer._start_together, args=(tmp_path, "g0s0", 2, 10.0))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive()  # g1s0 has no Manager yet
    (tmp_path / "ready-g1s0").touch()
    worker.join(10.0)
    assert not worker.is_alive()
    with pytest.raises(RuntimeError, match=r"not every torchft worker started within 0\.05 s"):
        torchft_peer._start_together(tmp_path, "g0s0", 3, timeout_s=0.05)
