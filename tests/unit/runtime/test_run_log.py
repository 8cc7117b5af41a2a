"""RunLog: step rows, the recovery record with planning-core phase names, and the sample ledger."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from oobleck.planning.plan import Plan, Transfer
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.engine.records import LayerCopy
from oobleck.runtime.run_log import RunLog, transfer_fields

DATA = Path(__file__).resolve().parent / "data"

STEP = {"step": 7, "loss": 2.5, "step_s": 0.04}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recovery_record_is_written_with_the_first_step_after_it(tmp_path: Path) -> None:
    """The reporter writes the step row, then one recovery row whose phases add up from its timestamps."""
    log = RunLog(tmp_path, node=1, ledger=False)
    lost = Membership(generation=2, members=(0, 1), lost=(2,), detected_at=10.2, failure_at=10.0, reason="x")
    log.recovery_started(lost, noticed=10.3, plan_ready=10.35, timing={"rebuild_groups_s": 0.2})
    log.step_done(STEP, generation=2, pipeline=0, sample_ids=(), reporter=True)
    step, recovery = _rows(tmp_path / "metrics.jsonl")
    assert step["loss"] == 2.5 and "event" not in step
    assert recovery["event"] == "recovery" and recovery["lost"] == [2] and recovery["step"] == 7
    phases = recovery["phases_s"]
    assert set(phases) == {"detect", "plan", "rebuild_groups", "transfer_state", "first_step"}
    assert abs(phases["detect"] - 0.3) < 1e-9 and abs(phases["plan"] - 0.05) < 1e-9
    assert (phases["rebuild_groups"], phases["transfer_state"], phases["first_step"]) == (0.2, 0.0, 0.04)
    log.step_done({**STEP, "step": 8}, generation=2, pipeline=0, sample_ids=(), reporter=True)
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None, "recovery", None]


def test_a_reporter_killed_right_after_writing_leaves_its_step_and_recovery_together(tmp_path: Path) -> None:
    """A real process SIGKILLed the moment its first ``write`` to metrics.jsonl returns still left
    the step's recovery record: both rows go in that one write (CI lost a recovery record to a kill
    that landed between two appends)."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from oobleck.runtime.control.membership import Membership
        from oobleck.runtime.run_log import RunLog

        log = RunLog(Path({str(tmp_path)!r}), node=0, ledger=False)
        log.recovery_started(Membership(generation=1, members=(0, 1), joined=(1,)),
                             noticed=1.0, plan_ready=1.0, timing={{}})
        real_write = os.write

        def write_then_die(fd, data):
            written = real_write(fd, data)
            os.kill(os.getpid(), signal.SIGKILL)
            return written

        os.write = write_then_die
        log.step_done({STEP!r}, generation=1, pipeline=0, sample_ids=(), reporter=True)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None, "recovery"]


def test_non_reporter_writes_only_its_ledger(tmp_path: Path) -> None:
    """A first-stage worker that is not the reporter appends its sample ids and drops the recovery."""
    log = RunLog(tmp_path, node=3, ledger=True)
    log.recovery_started(Membership(generation=1, members=(3,)), noticed=1.0, plan_ready=1.0, timing={})
    log.step_done(STEP, generation=1, pipeline=2, sample_ids=(4, 5), reporter=False)
    assert not (tmp_path / "metrics.jsonl").exists()
    assert _rows(tmp_path / "ledger" / "node3.jsonl") == [
        {"step": 7, "generation": 1, "pipeline": 2, "sample_ids": [4, 5]}
    ]
    log.step_done(STEP, generation=1, pipeline=2, sample_ids=(), reporter=True)
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None]


def test_a_recovery_pending_when_the_next_regroup_starts_is_never_written(tmp_path: Path) -> None:
    """A worker that ran no step of generation 1 and then rolls a step forward as generation 2's
    rank 0 writes that step's row but not generation 1's recovery (its rank 0 wrote it): the CI
    failure had the same recovery twice."""
    log = RunLog(tmp_path, node=1, ledger=False)
    log.recovery_started(
        Membership(generation=1, members=(0, 1), joined=(1,)), noticed=1.0, plan_ready=1.0, timing={}
    )
    log.regroup_started()
    log.step_done(STEP, generation=1, pipeline=0, sample_ids=(), reporter=True)
    assert [row.get("event") for row in _rows(tmp_path / "metrics.jsonl")] == [None]


def _copy(layer: int, src: int, dst: int, size_bytes: int) -> Transfer:
    return Transfer(layer=layer, src_node=src, dst_node=dst, bytes=size_bytes)


def _deep_change() -> tuple[Plan, tuple[Transfer, ...]]:
    """examples/tiny_gpt2_deep.yaml on hosts.local5 (pipelines [0, 1] and [2, 3, 4]) after losing node 4.

    The plan is the planner's, saved as JSON (planning it here would import the model code).
    """
    plan = Plan.from_dict(
        json.loads((DATA / "deep_plan_after_losing_node4.json").read_text()), gpus_per_node=1
    )
    transfers = (_copy(1, 0, 2, 599808), _copy(3, 1, 3, 199680), _copy(2, 1, 3, 599808))
    return plan, transfers


def test_transfer_fields_are_job_wide_and_name_each_new_pipeline(tmp_path: Path) -> None:
    """The recovery record's transfer figures sum every planned copy and give each pipeline's stages."""
    plan, transfers = _deep_change()
    fields = transfer_fields(plan, transfers, ())
    assert fields["layers_copied"] == 3 and fields["transfer_bytes"] == 599808 + 599808 + 199680
    assert fields["transfers"] == [
        {"layer": 1, "src": 0, "dst": 2, "bytes": 599808},
        {"layer": 2, "src": 1, "dst": 3, "bytes": 599808},
        {"layer": 3, "src": 1, "dst": 3, "bytes": 199680},
    ]
    assert fields["pipelines"] == [
        {
            "nodes": [0, 1],
            "microbatches": 4,
            "stages": [{"node": 0, "layers": [0, 1]}, {"node": 1, "layers": [2, 3]}],
        },
        {
            "nodes": [2, 3],
            "microbatches": 4,
            "stages": [{"node": 2, "layers": [0, 1]}, {"node": 3, "layers": [2, 3]}],
        },
    ]
    assert fields["copies"] == [] and transfer_fields(plan, (), ())["transfer_bytes"] == 0


def test_receiver_writes_one_transfer_row_per_copy_at_once(tmp_path: Path) -> None:
    """A receiving worker that is not the reporter writes its copies as transfer rows, before any step."""
    plan, transfers = _deep_change()
    copies = (
        LayerCopy(layer=2, src=1, dst=3, bytes=599808, ms=1.5),
        LayerCopy(layer=3, src=1, dst=3, bytes=199680, ms=2.0),
    )
    log = RunLog(tmp_path, node=3, ledger=False)
    target = Membership(generation=1, members=(0, 1, 2, 3), lost=(4,), reason="node 4 lost")
    log.recovery_started(target, noticed=1.0, plan_ready=1.1, timing=transfer_fields(plan, transfers, copies))
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [
        {k: r[k] for k in ("event", "generation", "layer", "src", "dst", "bytes", "ms", "node")} for r in rows
    ] == [
        {
            "event": "transfer",
            "generation": 1,
            "layer": 2,
            "src": 1,
            "dst": 3,
            "bytes": 599808,
            "ms": 1.5,
            "node": 3,
        },
        {
            "event": "transfer",
            "generation": 1,
            "layer": 3,
            "src": 1,
            "dst": 3,
            "bytes": 199680,
            "ms": 2.0,
            "node": 3,
        },
    ]
    log.step_done(STEP, generation=1, pipeline=1, sample_ids=(), reporter=False)
    assert len(_rows(tmp_path / "metrics.jsonl")) == 2


def test_reporter_recovery_record_carries_totals_not_its_own_copies(tmp_path: Path) -> None:
    """The reporter's recovery row has the job-wide totals and the pipelines, and no per-rank copy list."""
    plan, transfers = _deep_change()
    log = RunLog(tmp_path, node=0, ledger=False)
    target = Membership(generation=1, members=(0, 1, 2, 3), lost=(4,), reason="node 4 lost")
    log.recovery_started(target, noticed=1.0, plan_ready=1.1, timing=transfer_fields(plan, transfers, ()))
    log.step_done(STEP, generation=1, pipeline=0, sample_ids=(), reporter=True)
    step, recovery = _rows(tmp_path / "metrics.jsonl")
    assert "event" not in step and recovery["event"] == "recovery"
    assert recovery["transfer_bytes"] == 1399296 and recovery["layers_copied"] == 3
    assert [p["nodes"] for p in recovery["pipelines"]] == [[0, 1], [2, 3]]
    assert "copies" not in recovery
