"""``oobleck master`` refuses a tensor-parallel degree above the agents' slots before any agent starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cli.test_master_preflight import JOB, run_master


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)


def test_tp2_on_one_slot_agents_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four slots=1 agents and a job asking max_degree 2: exit 2, one line, a stage cannot span nodes."""
    hosts = tmp_path / "hosts4"
    hosts.write_text("localhost slots=1\n" * 4)
    (tmp_path / "job.yaml").write_text(JOB + "tensor_parallel:\n  max_degree: 2\n")
    line = run_master(tmp_path, capsys, hosts=hosts)
    assert f"{tmp_path}/job.yaml: tensor_parallel.max_degree: 2 but nodes have 1 device(s) each" in line
    assert "a stage cannot span nodes" in line
