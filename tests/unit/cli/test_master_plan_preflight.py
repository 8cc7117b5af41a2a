"""``oobleck master`` refuses a job whose plan does not fit the hostfile's nodes: exit 2, one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main
from oobleck.errors import ConfigError
from oobleck.runtime.config import JobConfig, ModelConfig, load_job_config
from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.job_preflight import check_job

DEEP = Path(__file__).resolve().parents[3] / "examples" / "tiny_gpt2_deep.yaml"


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOBLECK_TOKEN", raising=False)


def test_master_refuses_f_not_guaranteed_on_the_hostfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two hosts for a job needing (f+1)*n0 = 4 nodes: exit 2 in < 3 s with both fixes, no run started."""
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\nlocalhost slots=1\n")
    argv = ["master", "--hostfile", str(hosts), "--config", str(DEEP), "--run-dir", str(tmp_path / "run")]
    start = time.monotonic()
    code = oobleck_main([*argv, "--timeout-s", "2"])
    elapsed_s = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed_s < 3.0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"oobleck master: error: {DEEP}: plan: fault_tolerance=1 needs (f+1)*n0 = 4")
    assert "use >= 4 nodes or set device_memory_bytes: " in lines[0]
    assert not (tmp_path / "run" / "agents.json").exists()


def test_check_job_passes_a_job_that_fits() -> None:
    """A tiny job on two 1-slot hosts passes every check."""
    job = JobConfig(
        model=ModelConfig(name="tiny-gpt2", arch="gpt2"), global_batch=4, steps=1, fault_tolerance=1
    )
    check_job(job, "job.yaml", (HostEntry("a"), HostEntry("b")))


def test_check_job_leaves_mismatched_slots_to_the_membership_check() -> None:
    """Hosts with unequal slots are not planned here (registration refuses them with its own line)."""
    job = JobConfig(
        model=ModelConfig(name="tiny-gpt2", arch="gpt2"),
        global_batch=16,
        microbatch_size=2,
        steps=1,
        fault_tolerance=1,
        device_memory_bytes=2_000_000,
    )
    check_job(job, "job.yaml", (HostEntry("a", slots=1), HostEntry("b", slots=2)))


def test_resumed_run_needs_only_n0_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a checkpoint in the run dir the workers restart-plan (f lowered), so 2 nodes pass, 1 does not."""
    job = load_job_config(DEEP)
    (tmp_path / "run" / "checkpoints" / "step00000005").mkdir(parents=True)
    two = (HostEntry("a"), HostEntry("b"))
    with pytest.raises(ConfigError, match="fault_tolerance=1 needs"):
        check_job(job, "job.yaml", two)
    check_job(job, "job.yaml", two, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"resuming from a checkpoint needs n0 = 2 nodes .*, got 1"):
        check_job(job, "job.yaml", two[:1], tmp_path / "run")
