"""Tensor-parallel plans: head checks, which projections shard, shard round trips, TP topologies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.testing._internal.distributed.fake_pg import FakeStore

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.tensor_parallel import (
    ShardSpec,
    check_degree,
    full_tensor,
    local_shard,
    shard_block,
    shard_specs,
)
from oobleck.runtime.engine.topology import build_topology
from oobleck.runtime.worker import main as worker_main


@pytest.fixture
def mesh2() -> Iterator[DeviceMesh]:
    """Rank 0 of a 2-rank world of torch's fake backend (collectives are no-ops): enough to shard."""
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield DeviceMesh.from_group(dist.group.WORLD, "cpu")
    finally:
        dist.destroy_process_group()


def test_heads_not_divisible_by_degree_is_a_config_error() -> None:
    """A degree that does not divide the (kv) heads is refused, naming the key and the fix."""
    llama = build_adapter(ModelConfig(name="tiny-llama", arch="llama")).hf_config  # 4 heads, 2 kv heads
    check_degree("llama", llama, 2)
    with pytest.raises(ConfigError, match=r"model.num_key_value_heads=2 is not divisible by the TP degree 4"):
        check_degree("llama", llama, 4)
    gpt2 = build_adapter(ModelConfig(name="tiny-gpt2", arch="gpt2")).hf_config
    with pytest.raises(ConfigError, match=r"num_attention_heads=4 .* lower tensor_parallel.max_degree"):
        check_degree("gpt2", gpt2, 3)


@pytest.mark.parametrize(
    ("model", "arch", "colwise", "rowwise"),
    [
        ("tiny-gpt2", "gpt2", {"attn.c_attn", "mlp.c_fc"}, {"attn.c_proj", "mlp.c_proj"}),
        (
            "tiny-llama",
            "llama",
            {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"},
            {"self_attn.o_proj", "mlp.down_proj"},
        ),
        (
            "tiny-opt",
            "opt",
            {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "fc1"},
            {"self_attn.out_proj", "fc2"},
        ),
    ],
)
def test_shard_block_splits_projections_and_replicates_norms(
    mesh2: DeviceMesh, model: str, arch: str, colwise: set[str], rowwise: set[str]
) -> None:
    """q/k/v and MLP-up shard by rows, out/down by columns, norms stay whole; shards slice the full block."""
    adapter = build_adapter(ModelConfig(name=model, arch=arch))
    full = dict(adapter.build_layer(1, 3).named_parameters())
    block = adapter.build_layer(1, 3)
    specs = shard_block(block, arch, adapter.hf_config, mesh2)
    placements: dict[str, str] = {}
    for name, param in block.named_parameters():
        module = name.removeprefix("block.").rpartition(".")[0]
        placed = param.placements[0] if isinstance(param, DTensor) else None
        placements[name] = "shard0" if placed == Shard(0) else "shard1" if placed == Shard(1) else "whole"
        expected = (
            "shard0"
            if module in colwise
            else "shard1"
            if module in rowwise and name.endswith("weight")
            else "whole"
        )
        assert placements[name] == expected, name
        local = param.to_local() if isinstance(param, DTensor) else param
        assert torch.equal(local.detach(), local_shard(full[name].detach(), specs[name], 0)), name
        if isinstance(placed, Replicate):
            assert specs[name].dim is None
    assert specs == shard_specs(arch, list(specs), 2)
    assert {n for n, p in placements.items() if p == "whole"} >= {
        n for n in specs if "norm" in n or "ln" in n
    }


def test_fused_qkv_shard_is_q_k_v_of_the_rank() -> None:
    """GPT-2's fused c_attn shard r is [q_r; k_r; v_r] of the transposed Conv1D weight; shards rebuild it."""
    full = torch.arange(4 * 12, dtype=torch.float32).reshape(4, 12)  # Conv1D [in=4, out=3*4]
    spec = ShardSpec(dim=0, degree=2, transpose=True, fused=3)
    shards = [local_shard(full, spec, r) for r in range(2)]
    q, k, v = full.t().chunk(3)
    assert torch.equal(shards[1], torch.cat([q[2:], k[2:], v[2:]]))
    assert torch.equal(full_tensor(shards, spec), full)
    row = ShardSpec(dim=1, degree=2)
    assert torch.equal(full_tensor([local_shard(full, row, r) for r in range(2)], row), full)


def tp_plan(pipelines: list[list[tuple[int, int, int]]]) -> Plan:
    built, node = [], 0
    for stages in pipelines:
        template = PipelineTemplate(
            num_nodes=len(stages),
            gpus_per_node=2,
            stages=tuple(
                Stage(first_layer=a, end_layer=b, node=i, gpus=g, latency_s=1.0, memory_bytes=0)
                for i, (a, b, g) in enumerate(stages)
            ),
        )
        built.append(
            Pipeline(template=template, nodes=tuple(range(node, node + len(stages))), microbatches=2)
        )
        node += len(stages)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=2 * len(built),
        microbatch_size=1,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def test_tp_topology_groups_peers_and_shard_buckets() -> None:
    """TP groups are a stage's ranks, sends fan out from 1 to 2 ranks, buckets are per (layer, shard)."""
    plan = tp_plan([[(0, 4, 2)], [(0, 1, 1), (1, 4, 2)]])
    topology = build_topology(
        plan, {0: 0, 1: 2, 2: 4}, num_layers=4, replicated_layers=(0, 3), tied_pairs=((0, 3),)
    )
    embedding, tp0, tp1 = (topology.stage_of_rank(r) for r in (2, 4, 5))
    assert embedding.next_targets == (4, 5) and embedding.next_rank == 4 and embedding.tp_ranks == (2,)
    assert (tp0.prev_rank, tp0.prev_targets, tp1.prev_rank, tp1.prev_targets) == (2, (2,), 2, ())
    assert (tp1.tp_ranks, tp1.tp_rank, tp1.sharded_layers) == ((4, 5), 1, (1, 2))
    assert not tp1.contributes(3) and tp1.contributes(1) and topology.stage_of_rank(0).contributes(3)
    by_ranks = {b.ranks: (b.layers, b.tied) for b in topology.buckets}
    assert by_ranks == {
        (0, 1, 2): ((0,), ()),
        (0, 4): ((1, 2), ()),
        (1, 5): ((1, 2), ()),
        (0, 1, 4, 5): ((3,), ()),
        (0, 1, 2, 4, 5): ((), (0,)),
    }
    assert set(topology.group_rank_sets()) == set(by_ranks) | {(0, 1), (4, 5)}
    assert topology.stage_of_rank(1).norm_layers == (0, 1, 2, 3) and tp1.norm_layers == ()


def test_only_tp_rank_0_of_a_first_stage_records_samples() -> None:
    """Of a TP-2 first stage only TP rank 0 writes the ledger (a rolled-forward TP rank 1 wrote a repeat)."""
    plan = tp_plan([[(0, 4, 2)], [(0, 1, 1), (1, 4, 2)]])
    topology = build_topology(plan, {0: 0, 1: 2, 2: 4}, num_layers=4, replicated_layers=(0, 3))
    recording = [info.rank for info in topology.stages if info.records_samples]
    assert recording == [0, 2]  # pipeline 0's TP rank 0 (not rank 1), pipeline 1's embedding stage


def test_mixed_tp_degrees_of_a_block_are_refused() -> None:
    """A block sharded 2 ways in one pipeline and whole in another is a PlanningError naming the fix."""
    plan = tp_plan([[(0, 4, 2)], [(0, 2, 1), (2, 4, 1)]])
    with pytest.raises(PlanningError, match=r"layer 1 is tensor-parallel at degrees \[1, 2\]"):
        build_topology(plan, {0: 0, 1: 2, 2: 4}, num_layers=4, replicated_layers=(0, 3))


def test_worker_asking_tp2_on_one_device_nodes_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job asking tensor_parallel.max_degree 2 on 1-device nodes exits 2 with one line naming the key."""
    config = tmp_path / "job.yaml"
    job = {"model": "tiny-gpt2", "global_batch": 4, "steps": 1, "tensor_parallel": {"max_degree": 2}}
    config.write_text(yaml.safe_dump(job))
    assert worker_main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tensor_parallel.max_degree: 2 but nodes have 1 device(s) each")
    assert "a stage cannot span nodes" in err and "\n" not in err
