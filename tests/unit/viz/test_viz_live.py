"""Tests of the run recorder's building blocks: refusing a used run dir, reading steps, killing a node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oobleck.errors import OobleckError
from oobleck.viz import live
from oobleck.viz.live import _kill_node, _last_step, record_failure_run


def test_a_run_directory_with_metrics_is_refused(tmp_path: Path) -> None:
    """Appending to an earlier run's metrics would mix two runs, so the recorder refuses at once."""
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(OobleckError, match="fresh run directory"):
        record_failure_run("job.yaml", tmp_path, hostfile="hosts", kill_after_step=1)


def test_last_step_ignores_events_and_a_half_written_line(tmp_path: Path) -> None:
    """Only complete step rows count; membership events and a torn last line do not."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"event": "membership", "step": 9}\n{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
    assert _last_step(metrics) == 1


@pytest.mark.parametrize("own_group", [True, False])
def test_kill_node_kills_exactly_the_chosen_agent(tmp_path: Path, own_group: bool) -> None:
    """The highest live node's agent dies, in its own process group or not; the other agent survives."""
    agents = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=own_group)
        for _ in range(2)
    ]
    try:
        rows = [
            {"node": n, "agent_pid": p.pid, "worker_pids": [], "alive": True} for n, p in enumerate(agents)
        ]
        (tmp_path / "agents.json").write_text(json.dumps(rows))
        _kill_node(tmp_path, None)
        assert agents[1].wait(timeout=10) != 0
        assert agents[0].poll() is None
        with pytest.raises(OobleckError, match="node 7 is not a live agent"):
            _kill_node(tmp_path, 7)
    finally:
        for process in agents:
            process.kill()
            process.wait(timeout=10)


def test_scenarios_record_one_run_each_on_a_hostfile_of_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scenario runs into its own folder on ``hosts.local<N>`` with its node and step (the runs
    themselves are notebook 03's real recordings, tested there)."""
    calls: list[tuple[str, str, int, int]] = []

    def record(config: object, run_dir: Path, *, hostfile: Path, kill_after_step: int, node: int) -> Path:
        calls.append((Path(run_dir).name, Path(hostfile).read_text(), kill_after_step, node))
        return Path(run_dir)

    monkeypatch.setattr(live, "record_failure_run", record)
    live.record_scenarios("job.yaml", tmp_path, {"a-1": (2, 1, 30), "b-1": (3, 0, 35)})
    assert calls == [("a-1", "localhost slots=1\n" * 2, 30, 1), ("b-1", "localhost slots=1\n" * 3, 35, 0)]


def test_repeats_are_recorded_in_rounds_one_of_each_scenario_per_round() -> None:
    """Round i holds each scenario's i-th repeat; a scenario with fewer repeats drops out of later rounds."""
    order = live.in_rounds({"cal": ((5, 1, 30), 2), "eval": ((5, 0, 35), 3)})
    assert list(order) == ["cal-1", "eval-1", "cal-2", "eval-2", "eval-3"]
    assert order["cal-2"] == (5, 1, 30) and order["eval-3"] == (5, 0, 35)
    assert live.in_rounds({}) == {}
