"""Heterogeneous pipelines whose stages are tensor-parallel over 2 ranks train like one process."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.runtime.config import ModelConfig, load_job_config
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.tensor_parallel import full_tensor, shard_specs
from tests.integration.test_engine_equivalence import (
    GLOBAL_MICROBATCHES,
    MICROBATCH,
    TOLERANCE,
    losses,
    make_plan,
    relative_diff,
    run_workers,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOTS = 2
STEPS = 3
NODES = 3


def tp_plan(pipelines: list[tuple[list[tuple[int, int, int]], int]]) -> Plan:
    """Pipelines of (first layer, end layer, gpus) stages, one node per stage, on 2-device nodes."""
    built, node = [], 0
    for stages, microbatches in pipelines:
        template = PipelineTemplate(
            num_nodes=len(stages),
            gpus_per_node=SLOTS,
            stages=tuple(
                Stage(first_layer=a, end_layer=b, node=i, gpus=g, latency_s=1.0, memory_bytes=0)
                for i, (a, b, g) in enumerate(stages)
            ),
        )
        nodes = tuple(range(node, node + len(stages)))
        built.append(Pipeline(template=template, nodes=nodes, microbatches=microbatches))
        node += len(stages)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=sum(p.microbatches for p in built),
        microbatch_size=MICROBATCH,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def run_tp(launch_ranks: Callable[..., None], config: Path, plan: Plan, run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    plan_file = run_dir / "plan.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    argv = [sys.executable, "-m", "tests.integration.tp_ranks", str(config), str(plan_file), str(run_dir)]
    world = NODES * SLOTS

    def env(rank: int, port: int) -> dict[str, str]:
        return {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "OOBLECK_TEST_SLOTS": str(SLOTS),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }

    launch_ranks(world, run_dir, lambda rank, port: argv, env, timeout_s=280.0)


def gathered_params(run_dir: Path, plan: Plan, config: Path) -> dict[str, dict[str, object]]:
    """Full parameters of pipeline 0, rebuilt from its TP ranks' shards with the shard specs."""
    job = load_job_config(config)
    adapter = build_adapter(ModelConfig(name=job.model.name, arch=job.model.arch))
    template = plan.pipelines[0].template
    full: dict[str, object] = {}
    for (_, devices), stage in zip(template.stage_devices(), template.stages, strict=True):
        shards = [load_file(str(run_dir / "state" / f"rank{d}.safetensors")) for d in devices]
        for layer in stage.layers:
            prefix = f"layers.{layer}.param."
            names = [k[len(prefix) :] for k in shards[0] if k.startswith(prefix)]
            degree = len(devices) if 0 < layer < adapter.num_layers - 1 else 1
            specs = shard_specs(adapter.arch, names, degree)
            for name in names:
                full[prefix + name] = full_tensor([s[prefix + name] for s in shards[:degree]], specs[name])
    return {"params": full}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("model", "stages_b"),
    [
        # pipeline B: embedding on one device feeding a TP-2 stage (fan-out 1 -> 2, gradients 2 -> 1)
        ("tiny-gpt2", [(0, 1, 1), (1, 4, 2)]),
        # pipeline B: two TP-2 stages, TP rank to TP rank
        ("tiny-llama", [(0, 2, 2), (2, 4, 2)]),
    ],
)
def test_tp2_pipelines_equal_one_process(
    tmp_path: Path, model: str, stages_b: list[tuple[int, int, int]], launch_ranks: Callable[..., None]
) -> None:
    """A whole-model TP-2 pipeline and a 2-stage one (3 + 5 microbatches) on 6 ranks match one process."""
    config = write_job(tmp_path, model, steps=STEPS)
    reference = tmp_path / "ref"
    run_workers(launch_ranks, config, make_plan([([(0, 4)], GLOBAL_MICROBATCHES)]), reference, 1)
    plan = tp_plan([([(0, 4, 2)], 3), (stages_b, 5)])
    run_tp(launch_ranks, config, plan, tmp_path / "tp")
    expected, got = losses(reference), losses(tmp_path / "tp")
    assert len(got) == len(expected) == STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert abs(a - b) <= TOLERANCE * abs(b), f"step {step}: loss {a} vs reference {b}"
    ref_state = load_file(str(reference / "state" / "node0.safetensors"))
    params = gathered_params(tmp_path / "tp", plan, config)["params"]
    assert set(params) == {k for k in ref_state if ".param." in k}
    for key, tensor in params.items():
        got_t, ref_t = _without_key_bias(key, tensor), _without_key_bias(key, ref_state[key])  # type: ignore[arg-type]
        assert relative_diff(got_t, ref_t) <= TOLERANCE, key


def _without_key_bias(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """GPT-2's fused q/k/v bias with its k third dropped (other tensors unchanged).

    NOTE: a key bias adds one constant per query row to the attention scores, which softmax
    ignores: its true gradient is exactly 0, so its trained value is rounding noise (Adam
    normalises noise to steps of size lr) that differs between any two summation orders, and a
    TP row-split changes the order of the forward sums. q and v biases are compared in full.
    """
    if not key.endswith("attn.c_attn.bias"):
        return tensor
    q, _, v = tensor.chunk(3)
    return torch.cat([q, v])
