"""The standalone (torchrun) worker follows torchrun's conventions: error file, fault_tolerance ignored."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.distributed as dist
import yaml

from oobleck.runtime import worker
from oobleck.runtime.config import job_config_from_dict
from oobleck.runtime.control.worker_errors import read_error_file
from oobleck.runtime.engine import Engine
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.standalone import plan_for_world
from oobleck.runtime.worker_logging import (
    configure_worker_logging,
    current_rank_label,
    log_setup,
    set_rank,
    worker_log_file,
)

pytest.importorskip("transformers.models.gpt2.modeling_gpt2")

JOB = """\
model: tiny-gpt2
data:
  source: pydoc
  sequence_length: 32
global_batch: 16
microbatch_size: 2
steps: 1
fault_tolerance: 1
hardware: cpu
profile: analytic
"""


@pytest.fixture
def standalone_env(monkeypatch, tmp_path):
    for name in ("OOBLECK_CONTROL", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    return error_file


def test_a_failing_standalone_worker_writes_torchruns_error_file(tmp_path, standalone_env):
    """A config error exits 2 and leaves TORCHELASTIC_ERROR_FILE in torch's @record layout with the error."""
    config = tmp_path / "job.yaml"
    config.write_text(JOB.replace("steps: 1", "steps: -1"))
    assert worker.main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    data = json.loads(standalone_env.read_text())
    assert data["message"]["message"].startswith("ConfigError: ") and "steps" in data["message"]["message"]
    assert int(data["message"]["extraInfo"]["timestamp"]) > 0
    summary = read_error_file(standalone_env, 2)
    assert summary is not None and "steps" in summary["message"]


def test_fault_tolerance_is_ignored_with_one_notice_under_torchrun(caplog):
    """fault_tolerance: 1 on a one-process world plans as f=0 and says so in one line, instead of failing."""
    job = job_config_from_dict(yaml.safe_load(JOB))
    caplog.set_level(logging.WARNING, logger="oobleck.runtime.engine.standalone")
    plan = plan_for_world(job, build_adapter(job.model), 1, store=dist.HashStore(), rank=0)
    assert plan.nodes == (0,) and plan.fault_tolerance == 0
    notices = [r.getMessage() for r in caplog.records if "fault_tolerance=1 ignored" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


def test_log_setup_names_the_real_rank_and_a_file_per_worker(tmp_path):
    """Elastic workers are labelled by node and local rank, torchrun ones by RANK; each has its own file."""
    elastic = {"OOBLECK_CONTROL": "fd:5", "OOBLECK_NODE": "2", "LOCAL_RANK": "1"}
    assert log_setup(elastic, tmp_path) == ("node 2 local 1", tmp_path / "logs/node2/rank1.log")
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert log_setup(torchrun, tmp_path) == ("3", tmp_path / "logs/node1/rank1.log")
    assert log_setup({"RANK": "x"}, tmp_path) == ("x", None)


def test_worker_lines_carry_the_rank_prefix_in_the_workers_own_file(tmp_path):
    """Each line goes to logs/node<N>/rank<L>.log prefixed [rank R], and set_rank relabels later lines."""
    path, root = worker_log_file(tmp_path, 1, 0), logging.getLogger()
    level = root.level
    handler = configure_worker_logging(label="node 1 local 0", log_file=path)
    try:
        logging.getLogger("oobleck.test").info("before")
        set_rank(5)
        logging.getLogger("oobleck.test").info("after")
    finally:
        assert handler is not None
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
    lines = path.read_text().splitlines()
    assert "[rank node 1 local 0] oobleck.test: before" in lines[0]
    assert "[rank 5] oobleck.test: after" in lines[1]


def test_each_generation_relabels_log_lines_with_its_rank():
    """Starting a generation makes later log lines name the engine's rank in it (not a fixed [rank 0])."""
    job = job_config_from_dict(yaml.safe_load(JOB.replace("fault_tolerance: 1", "fault_tolerance: 0")))
    store = dist.HashStore()
    engine = Engine(job, node=0, local_rank=0, device=torch.device("cpu"))
    try:
        plan = plan_for_world(job, engine.adapter, 1, store=store, rank=0)
        set_rank("node 0 local 0")
        engine.configure(plan, 0, {0: 0}, store)
        assert current_rank_label() == str(engine.rank) == "0"
    finally:
        engine.close()
