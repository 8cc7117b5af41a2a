"""`oobleck status` and the progress line read a run dir's files as the master and reporter write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.progress import progress_line, summarize
from oobleck.runtime.run_log import RunLog
from oobleck.runtime.run_status import status_text

JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 20\n"


def _steps(first: int, last: int, generation: int, t0: float) -> list[dict]:
    return [
        {"step": s, "generation": generation, "loss": 5.0 - s / 10, "samples": 4, "t": t0 + (s - first) * 0.5}
        for s in range(first, last + 1)
    ]


def test_rate_and_eta_use_the_newest_generation_only() -> None:
    """After a recovery pause, samples/s and the ETA come from the new generation's steps alone."""
    rows = [
        {"event": "membership", "generation": 0, "members": [0, 1, 2, 3]},
        *_steps(0, 4, 0, 100.0),
        {"event": "membership", "generation": 1, "members": [0, 1, 2]},
        *_steps(5, 9, 1, 200.0),
    ]
    progress = summarize(rows, 20)
    assert progress.step == 9 and progress.nodes == 3 and progress.generation == 1
    assert progress.samples_per_s == pytest.approx(8.0) and progress.eta_s == pytest.approx(5.0)
    line = progress_line(progress)
    assert line.startswith("step 10/20  loss 4.1000  8.0 samples/s  3 nodes") and "ETA 5s" in line


def test_status_shows_nodes_plan_rate_and_recoveries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run dir with a recovery shows the newest plan's pipelines, the step rate and the recovery line."""
    (tmp_path / "job.json").write_text(json.dumps({"job": {"config_text": JOB}, "expected_agents": 2}))
    rows = [{"node": n, "host": "h", "alive": n != 1, "agent_pid": 10 + n} for n in (0, 1)]
    (tmp_path / "agents.json").write_text(json.dumps(rows))
    record = {
        "generation": 1,
        "reason": "node(s) [1] lost: connection lost",
        "members": [0],
        "pipelines": [{"nodes": [0], "microbatches": 4, "stages": [{"node": 0, "layers": [0, 1, 2, 3]}]}],
    }
    (tmp_path / "plan.json").write_text(json.dumps(record))
    recovery = {"event": "recovery", "generation": 1, "lost": [1], "joined": [], "phases_s": {"detect": 1.5}}
    lines = [*_steps(0, 3, 0, 10.0), recovery, *_steps(4, 7, 1, 20.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert oobleck_main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "plan     generation 1: 1 pipelines" in out and "node 0: layers 0-3" in out
    assert "rate     2.00 steps/s" in out and "1 alive of 2 registered" in out
    assert "recovery gen 1: lost [1] joined []: 1.50 s (detect 1.50)" in out


def test_plan_adopted_writes_the_generation_plan(tmp_path: Path) -> None:
    """The reporter's plan record names the generation and each stage's node and layers."""
    from oobleck.planning.plan import Plan

    plan = Plan.from_dict(
        json.loads((Path(__file__).parent / "data" / "deep_plan_after_losing_node4.json").read_text()), 1
    )
    target = Membership(2, tuple(plan.nodes), reason="node 4 lost")
    RunLog(tmp_path, node=0, ledger=False).plan_adopted(target, plan)
    written = json.loads((tmp_path / "plans" / "gen2.json").read_text())
    assert written == json.loads((tmp_path / "plan.json").read_text())
    assert written["generation"] == 2 and len(written["pipelines"]) == len(plan.pipelines)
    assert "plan     generation 2" in status_text(tmp_path)


def test_status_of_a_missing_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`oobleck status` on a folder that is no run dir exits 2 with one line."""
    assert oobleck_main(["status", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_tail_reports_every_n_steps_and_each_recovery_once(tmp_path: Path) -> None:
    """The master's tail prints a progress line every N steps, the last step, and each recovery once."""
    from oobleck.runtime.control.progress import ProgressTail

    path = tmp_path / "metrics.jsonl"
    tail = ProgressTail(path)
    assert tail.report(8, 4) == []
    with path.open("w") as out:
        out.write("".join(json.dumps(r) + "\n" for r in _steps(0, 4, 0, 0.0)) + '{"step": 5, "lo')
    assert [line.split("  ")[0] for line in tail.report(8, 4)] == ["step 5/8"]
    recovery = {"event": "recovery", "generation": 1, "lost": [2], "joined": [], "phases_s": {"plan": 0.25}}
    with path.open("a") as out:
        out.write(
            'ss": 1}\n'
            + json.dumps(recovery)
            + "\n"
            + "".join(json.dumps(r) + "\n" for r in _steps(6, 7, 1, 9.0))
        )
    (tmp_path / "plan.json").write_text(json.dumps({"generation": 1, "pipelines": [{}, {}]}))
    lines = tail.report(8, 4)
    assert lines[0].startswith("recovery gen 1: lost [2]") and lines[1].startswith("step 8/8")
    assert "2 pipelines" in lines[1]
    assert tail.report(8, 4) == []
