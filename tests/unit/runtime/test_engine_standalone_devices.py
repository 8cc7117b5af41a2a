"""The standalone worker's nodes follow torchrun's LOCAL_WORLD_SIZE instead of one process per node."""

from __future__ import annotations

import pytest
import torch.distributed as dist
import yaml

from oobleck.errors import ConfigError
from oobleck.runtime import worker
from oobleck.runtime.config import job_config_from_dict
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.standalone import plan_for_world

# NOTE: the adapters import the GPT-2 model code lazily; importing it here keeps that out of the test.
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
hardware: {hardware}
profile: analytic
"""


def _job(hardware: str = "cpu"):
    return job_config_from_dict(yaml.safe_load(JOB.format(hardware=hardware)))


def test_four_processes_of_two_devices_are_two_nodes():
    """WORLD_SIZE=4 with LOCAL_WORLD_SIZE=2 plans nodes 0 and 1, each template with 2 devices per node."""
    job = _job()
    plan = plan_for_world(job, build_adapter(job.model), 4, store=dist.HashStore(), rank=0, gpus_per_node=2)
    assert plan.nodes == (0, 1)
    assert all(p.template.gpus_per_node == 2 for p in plan.pipelines)
    assert sum(len(p.template.stages) for p in plan.pipelines) == 4  # one stage per device


def test_world_not_a_multiple_of_the_node_is_a_config_error():
    """WORLD_SIZE=3 cannot be split into nodes of LOCAL_WORLD_SIZE=2: a one-line ConfigError."""
    job = _job()
    with pytest.raises(ConfigError, match="WORLD_SIZE=3 is not a multiple of LOCAL_WORLD_SIZE=2"):
        plan_for_world(job, build_adapter(job.model), 3, store=dist.HashStore(), rank=0, gpus_per_node=2)


def test_standalone_on_a_gpu_entry_with_one_process_per_node_exits_2(tmp_path, monkeypatch, capsys):
    """One process per node priced as h100 (8 GPUs per node) is refused with exit 2, naming the fix."""
    config = tmp_path / "job.yaml"
    config.write_text(JOB.format(hardware="h100"))
    for name in ("OOBLECK_CONTROL", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert worker.main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "LOCAL_WORLD_SIZE=1 but hardware 'h100' has gpus_per_node=8" in err
    assert "--nproc-per-node 8" in err and "gpus_per_node: 1" in err
