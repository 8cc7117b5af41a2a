"""``oobleck master`` refuses manual ``pipelines[i].count`` values that do not fit before agents start."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main

JOB = """\
model: tiny-gpt2
global_batch: 16
microbatch_size: 2
steps: 1
fault_tolerance: 1
hardware: cpu
profile: analytic
pipelines:
  - {stages: [[0, 1, 2, 3]], count: 3}
  - {stages: [[0, 1], [2, 3]], count: 1}
"""


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)


def test_master_refuses_counts_needing_more_nodes_than_the_hostfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counts of 3 one-node + 1 two-node pipelines on 3 hosts: exit 2, one line naming the fix, no agents."""
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n" * 3)
    argv = ["master", "--hostfile", str(hosts), "--config", str(job), "--run-dir", str(tmp_path / "run")]
    code = oobleck_main([*argv, "--timeout-s", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines() == [
        f"oobleck master: error: {job}: pipelines: count [3, 1] needs 3 x 1 + 1 x 2 = 5 nodes, the job "
        "has 3; lower a count or add 2 nodes"
    ]
    assert not (tmp_path / "run" / "agents.json").exists()
