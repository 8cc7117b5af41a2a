"""Heterogeneous pipelines on 4 processes train exactly like one process on the same global batches."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage

STEPS = 5
MICROBATCH = 2
GLOBAL_MICROBATCHES = 8
TOLERANCE = 1e-5


def make_plan(pipelines: list[tuple[list[tuple[int, int]], int]]) -> Plan:
    """A plan of hand-made templates: each pipeline is (stage layer bounds, microbatches); node ids 0..N-1."""
    built, node = [], 0
    for bounds, microbatches in pipelines:
        stages = tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(bounds)
        )
        template = PipelineTemplate(num_nodes=len(bounds), gpus_per_node=1, stages=stages)
        built.append(
            Pipeline(
                template=template, nodes=tuple(range(node, node + len(bounds))), microbatches=microbatches
            )
        )
        node += len(bounds)
    total = sum(p.microbatches for p in built)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=total,
        microbatch_size=MICROBATCH,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def write_job(folder: Path, model: str, *, steps: int = STEPS) -> Path:
    """A tiny job config (clipping, decay and warmup all on, so each is exercised)."""
    job = {
        "model": model,
        "data": {"source": "pydoc", "sequence_length": 16, "ledger": True},
        "global_batch": GLOBAL_MICROBATCHES * MICROBATCH,
        "microbatch_size": MICROBATCH,
        "steps": steps,
        "optim": {
            "lr": 0.003,
            "warmup_steps": 1,
            "min_lr": 0.0003,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "exact_accumulation": True,
        },
        "seed": 11,
    }
    path = folder / f"{model}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_workers(
    launch_ranks: Callable[..., None], config: Path, plan: Plan | None, run_dir: Path, world: int
) -> None:
    """Run ``world`` standalone workers with a torchrun-style environment (see ``conftest.run_ranks``)."""
    run_dir.mkdir(parents=True)
    args = [sys.executable, "-m", "oobleck.runtime.worker", "--config", str(config)]
    args += ["--run-dir", str(run_dir), "--dump-state", "--timeout-s", "60"]
    if plan is not None:
        (run_dir / "given_plan.json").write_text(json.dumps(plan.to_dict()))
        args += ["--plan", str(run_dir / "given_plan.json")]

    def env(rank: int, port: int) -> dict[str, str]:
        return {
            "RANK": str(rank),
            # NOTE: every rank is a one-device node, as under `torchrun --nnodes N --nproc-per-node 1`.
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }

    launch_ranks(world, run_dir, lambda rank, port: args, env)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_equivalent(reference: Path, split: Path, world: int) -> None:
    """Losses and every held parameter of every node equal the one-process run (relative <= 1e-5)."""
    expected, got = losses(reference), losses(split)
    assert len(got) == len(expected) == STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert abs(a - b) <= TOLERANCE * abs(b), f"step {step}: loss {a} vs reference {b}"
    ref_state = load_file(str(reference / "state" / "node0.safetensors"))
    checked = set()
    for node in range(world):
        for key, tensor in load_file(str(split / "state" / f"node{node}.safetensors")).items():
            if ".param." in key:
                assert relative_diff(tensor, ref_state[key]) <= TOLERANCE, f"node {node}: {key}"
                checked.add(key)
    assert checked == {key for key in ref_state if ".param." in key}


@pytest.mark.integration
@pytest.mark.timeout(400)
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-gpt2-tied"])
def test_heterogeneous_pipelines_equal_one_process(
    tmp_path: Path, model: str, launch_ranks: Callable[..., None]
) -> None:
    """A 1-stage and a 3-stage pipeline (3 and 5 microbatches) on 4 processes match one process."""
    config = write_job(tmp_path, model)
    last = 3  # tiny presets: embedding, 2 blocks, head
    whole = make_plan([([(0, last + 1)], GLOBAL_MICROBATCHES)])
    run_workers(launch_ranks, config, whole, tmp_path / "ref", 1)
    split = make_plan([([(0, last + 1)], 3), ([(0, 1), (1, last), (last, last + 1)], 5)])
    run_workers(launch_ranks, config, split, tmp_path / "split", 4)
    check_equivalent(tmp_path / "ref", tmp_path / "split", 4)
    replicas = [load_file(str(tmp_path / "split" / "state" / f"node{n}.safetensors")) for n in range(4)]
    for key, tensor in replicas[0].items():
        other = next(r for r in replicas[1:] if key in r)
        assert torch.equal(tensor, other[key]), f"replicas of {key} differ"
    if model.endswith("tied"):
        assert torch.equal(
            replicas[3]["layers.3.param.lm_head.weight"], replicas[1]["layers.0.param.wte.weight"]
        )
    ledger = [
        json.loads(line) for n in (0, 1) for line in (tmp_path / "split" / "ledger" / f"node{n}.jsonl").open()
    ]
    for step in range(STEPS):
        ids = [i for entry in ledger if entry["step"] == step for i in entry["sample_ids"]]
        assert len(ids) == len(set(ids)) == GLOBAL_MICROBATCHES * MICROBATCH
