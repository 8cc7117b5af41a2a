"""Standalone launch: torchrun with 4 processes trains the planned pipelines with the losses of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oobleck.runtime.worker import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_gpt2.yaml"


def torchrun(nproc: int, run_dir: Path, timeout_s: float = 200.0) -> list[float]:
    """Run the worker under torchrun --standalone and return the per-step losses from metrics.jsonl."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    args += ["-m", "oobleck.runtime.worker", "--config", str(EXAMPLE), "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OOBLECK_CONTROL", None)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(len(records)))
    assert all(r["generation"] == 0 and r["samples"] == 16 and r["tokens"] == 16 * 32 for r in records)
    return [r["loss"] for r in records]


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_torchrun_four_processes_equal_one(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 4` and `--nproc-per-node 1` on examples/tiny_gpt2.yaml log equal losses."""
    four = torchrun(4, tmp_path / "four")
    one = torchrun(1, tmp_path / "one")
    assert len(four) == len(one) == 10
    for step, (a, b) in enumerate(zip(four, one, strict=True)):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: {a} vs {b}"
    plan = json.loads((tmp_path / "four" / "plan.json").read_text())
    # NOTE: torchrun's 4 processes on one host are one node of 4 devices (LOCAL_WORLD_SIZE=4, issue
    # 11), one stage per device (max_gpus_per_stage=1).
    assert sorted(n for p in plan["pipelines"] for n in p["nodes"]) == [0]
    assert sum(len(p["stages"]) for p in plan["pipelines"]) == 4


def test_worker_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config mistake ends the worker with exit code 2 and one stderr line naming the key."""
    config = tmp_path / "job.yaml"
    config.write_text(EXAMPLE.read_text().replace("steps: 10", "steps: -1"))
    assert main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {config}: steps: expected an integer >= 1, got -1"
