"""``oobleck plan --config job.yaml --nodes N``: the plan with memory per stage, or one line with fixes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main

DEEP = Path(__file__).resolve().parents[3] / "examples" / "tiny_gpt2_deep.yaml"


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert oobleck_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    return lines[0]


def test_prints_the_jobs_plan_with_stage_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """On 4 nodes the deep example prints its 2 x 2-stage plan and each stage's memory against the limit."""
    assert oobleck_main(["plan", "--config", str(DEEP), "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2 on 4 x cpu" in out and "f=1" in out
    assert "Memory per stage (limit 2.40 MiB usable per device)" in out
    assert "Plan: 2 pipelines" in out


def test_json_is_the_workers_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """--json names the config and plans with the job's memory, f and batch (n0 = 2, 8 microbatches)."""
    assert oobleck_main(["plan", "--json", "--config", str(DEEP), "--nodes", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == str(DEEP)
    assert report["memory_limit_bytes"] == int(2_800_000 * 0.9)
    assert report["min_nodes_per_pipeline"] == 2 and report["guaranteed_range"] == [4, 4]
    assert sum(p["microbatches"] for p in report["plan"]["pipelines"]) == 8
    for pipeline in report["plan"]["pipelines"]:
        assert all(s["memory_bytes"] <= report["memory_limit_bytes"] for s in pipeline["stages"])


def test_too_few_nodes_is_one_line_with_both_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    """On 2 nodes (f=1, n0=2) it exits 2 naming 4 nodes and a device_memory_bytes, within seconds."""
    start = time.monotonic()
    line = _error_line(capsys, ["plan", "--config", str(DEEP), "--nodes", "2"])
    assert time.monotonic() - start < 3.0
    assert line.startswith(f"oobleck plan: error: {DEEP}: plan: fault_tolerance=1 needs (f+1)*n0 = 4 nodes")
    assert "use >= 4 nodes or set device_memory_bytes: " in line


def test_job_flags_are_refused_with_config(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag the job file replaces (--fault-tolerance) is refused, not silently ignored."""
    line = _error_line(capsys, ["plan", "--config", str(DEEP), "--nodes", "4", "--fault-tolerance", "2"])
    assert (
        "--fault-tolerance: not used with --config" in line and "set fault_tolerance in the job file" in line
    )


def test_gpus_per_node_without_config_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--gpus-per-node only means something for a job; without --config it is one line."""
    line = _error_line(capsys, ["plan", "--gpus-per-node", "2"])
    assert "--gpus-per-node: only used with --config" in line
