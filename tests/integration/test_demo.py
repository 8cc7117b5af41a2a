"""``python -m oobleck.demo``: a live 4-node deep job loses a node mid-run; the recovery timeline is printed.

The live test starts the demo as ``make demo`` does (a subprocess), on a short job, and checks both
what it prints and what the runtime recorded in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from oobleck.demo import main
from oobleck.viz.runs import PHASES, load_run

STEPS = 16
KILL_AFTER_STEP = 6
KILLED_NODE = 0
"""First stage of pipeline [0, 1]: its loss re-forms [1, 2, 3] from the 3-node template (a layer copied)."""
DEMO_TIMEOUT_S = 240


def _stop_demo(demo: subprocess.Popen[str], run_dir: Path) -> None:
    """Interrupt a demo that overran (its own cleanup then kills the job), and kill what is left."""
    demo.send_signal(signal.SIGINT)
    try:
        demo.wait(timeout=15)
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.wait()
    # NOTE: the master leads its own process group (its agents lead theirs); kill them by pid.
    pids = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids.append(int(json.loads((run_dir / "master.json").read_text())["pid"]))
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids += [int(row["agent_pid"]) for row in json.loads((run_dir / "agents.json").read_text())]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_demo_kills_a_node_and_prints_the_recovery_timeline(tmp_path: Path) -> None:
    """The demo loses node 0 mid-run, finishes every step on the survivors and prints every phase and
    every layer copied between survivors with its bytes."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "oobleck.demo", "--steps", str(STEPS), "--run-dir", str(run_dir)]
    command += ["--kill-after-step", str(KILL_AFTER_STEP), "--node", str(KILLED_NODE)]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = demo.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_demo(demo, run_dir)
        pytest.fail(f"the demo did not finish within {DEMO_TIMEOUT_S} s; see {run_dir}")

    assert demo.returncode == 0, err
    assert "Recovery timeline" in out
    for phase in PHASES:
        assert phase in out, f"phase {phase} missing from the timeline"
    assert f"{STEPS} of {STEPS} steps done, each once" in out
    assert "no restart, no checkpoint reload" in out
    assert f"killing node {KILLED_NODE}" in err

    run = load_run(run_dir)
    assert sorted(step.step for step in run.steps) == list(range(STEPS))
    assert [failure.lost for failure in run.failures] == [(KILLED_NODE,)]
    generation = run.failures[0].generation
    after = [step for step in run.steps if step.generation == generation]
    assert after, "no step ran after the failure"
    assert after[0].step > KILL_AFTER_STEP
    assert after[-1].step == STEPS - 1
    assert not run.recoveries[0].restart
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    copies = [r for r in rows if r.get("event") == "transfer" and r["generation"] == generation]
    assert copies, "the loss copied no layer"
    assert "Layers copied between survivors" in out
    for copy in copies:
        row = f"{copy['layer']} {copy['src']} {copy['dst']} {copy['bytes']}"
        assert row in " ".join(out.split()), f"copy {row} missing from the printed table"
    assert "Pipelines after the recovery" in out and "nodes 1,2,3" in out


def test_bad_node_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A node id outside the hostfile is refused with exit 2 and one line naming the flag and the range."""
    assert main(["--node", "9"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "--node" in lines[0] and "0..3" in lines[0] and "got 9" in lines[0]


def test_late_kill_exits_2_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kill that leaves too few steps after it is refused with exit 2 before any process starts."""
    run_dir = tmp_path / "run"
    assert main(["--steps", "10", "--kill-after-step", "9", "--run-dir", str(run_dir)]) == 2
    assert "--kill-after-step must be in 1..5" in capsys.readouterr().err
    assert not run_dir.exists()


def test_non_integer_steps_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A non-integer --steps is an argparse usage error: exit 2 and one line."""
    assert main(["--steps", "many"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
