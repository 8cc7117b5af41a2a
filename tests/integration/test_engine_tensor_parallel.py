"""Heterogeneous pipelines whose stages are tensor-parallel over 2 ranks train like one process,
and recoveries that change a layer's TP degree (2 -> 1 -> 2, in-node and across nodes) move its
state exactly."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.runtime.config import load_job_config
from oobleck.runtime.engine import Engine
from tests.integration.test_engine_equivalence import (
    GLOBAL_MICROBATCHES,
    MICROBATCH,
    TOLERANCE,
    losses,
    make_plan,
    relative_diff,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOTS = 2
STEPS = 3
NODES = 3


def tp_plan(pipelines: list[tuple[list[tuple[int, ...]], int]]) -> Plan:
    """Pipelines of (first layer, end layer, gpus[, template node]) stages on 2-device nodes.

    Without a template node each stage has a node of its own.
    """
    built, node = [], 0
    for stages, microbatches in pipelines:
        placed = [(a, b, g, rest[0] if rest else i) for i, (a, b, g, *rest) in enumerate(stages)]
        count = max(n for *_, n in placed) + 1
        template = PipelineTemplate(
            num_nodes=count,
            gpus_per_node=SLOTS,
            stages=tuple(
                Stage(first_layer=a, end_layer=b, node=n, gpus=g, latency_s=1.0, memory_bytes=0)
                for a, b, g, n in placed
            ),
        )
        nodes = tuple(range(node, node + count))
        built.append(Pipeline(template=template, nodes=nodes, microbatches=microbatches))
        node += count
    return Plan(
        pipelines=tuple(built),
        global_microbatches=sum(p.microbatches for p in built),
        microbatch_size=MICROBATCH,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


MODELS = {
    # pipeline B: embedding on one device feeding a TP-2 stage (fan-out 1 -> 2, gradients 2 -> 1)
    "tiny-gpt2": [(0, 1, 1), (1, 4, 2)],
    # pipeline B: two TP-2 stages, TP rank to TP rank
    "tiny-llama": [(0, 2, 2), (2, 4, 2)],
}
"""Pipeline B of each model's plan; pipeline A is the whole model on one TP-2 stage (3 microbatches)."""

RECOVERY_STEPS = 4
SWITCHES = {
    # every block at TP 1: node 0 splits its TP-2 stage in two (in-node 2 -> 1), node 1 receives
    # block 1 from node 0's two shards (across nodes 2 -> 1)
    1: [([(0, 2, 1, 0), (2, 4, 1, 0)], 3), ([(0, 1, 1, 0), (1, 2, 1, 0), (2, 3, 1, 1), (3, 4, 1, 1)], 5)],
    # back to the TP-2 plan: node 0 reshards 1 -> 2 in place, node 2 gets block 1 cut in halves
    2: [([(0, 4, 2)], 3), (MODELS["tiny-gpt2"], 5)],
    # the same layout with the batch split the other way: every shard is kept, rebound to new groups
    3: [([(0, 4, 2)], 5), (MODELS["tiny-gpt2"], 3)],
}
"""The GPT-2 recovery run: before step s, every rank reconfigures to plan ``SWITCHES[s]`` (no node lost)."""


def one_process(config: Path, run_dir: Path) -> None:
    """The reference: the whole model on one rank, in this process (no extra interpreter to start)."""
    job = load_job_config(config)
    engine = Engine(job, node=0)
    engine.configure(make_plan([([(0, 4)], GLOBAL_MICROBATCHES)]), 0, {0: 0}, dist.HashStore())
    try:
        records = [{"step": step, "loss": engine.train_step(step).loss} for step in range(job.steps)]
        (run_dir / "state").mkdir(parents=True)
        save_file(engine.state_tensors(), str(run_dir / "state" / "node0.safetensors"))
    finally:
        engine.close()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module", params=list(MODELS))
def run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    launch_ranks: Callable[..., None],
) -> tuple[Path, str]:
    """One model's TP run on 6 ranks (3 nodes x 2 slots) and its one-process reference.

    GPT-2 adds its recovery run to the same launch (``SWITCHES``).
    """
    model: str = request.param
    folder = tmp_path_factory.mktemp(model)
    (folder / "tp").mkdir()
    config = write_job(folder, model, steps=STEPS)
    plan_file = folder / "plan.json"
    plan_file.write_text(json.dumps(tp_plan([([(0, 4, 2)], 3), (MODELS[model], 5)]).to_dict()))
    listed: list[dict[str, object]] = [
        {"config": str(config), "plan": str(plan_file), "run_dir": str(folder / "tp")}
    ]
    one_process(config, folder / "ref")
    if model == "tiny-gpt2":  # NOTE: the recovery run rides on the same processes (one start-up)
        (folder / "rec").mkdir()
        recovery = write_job(folder / "rec", model, steps=RECOVERY_STEPS)
        switch = []
        for step, pipelines in SWITCHES.items():
            path = folder / f"plan-{step}.json"
            path.write_text(json.dumps(tp_plan(pipelines).to_dict()))
            switch.append([step, str(path)])
        listed.append(
            {
                "config": str(recovery),
                "plan": str(plan_file),
                "run_dir": str(folder / "rec"),
                "switch": switch,
            }
        )
        one_process(recovery, folder / "rec-ref")
    (folder / "runs.json").write_text(json.dumps(listed))
    argv = [sys.executable, "-m", "tests.integration.tp_ranks", str(folder / "runs.json")]
    world = NODES * SLOTS

    def env(rank: int, port: int) -> dict[str, str]:
        return {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "OOBLECK_TEST_SLOTS": str(SLOTS),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }

    launch_ranks(world, folder / "logs", lambda rank, port: argv, env, timeout_s=560.0)
    return folder, model


def merged_params(run_dir: Path) -> dict[str, torch.Tensor]:
    """Full parameters from every rank's dump (each rank saves whole tensors; replicas are equal)."""
    full: dict[str, torch.Tensor] = {}
    for path in sorted((run_dir / "state").glob("rank*.safetensors")):
        full.update({k: v for k, v in load_file(str(path)).items() if ".param." in k})
    return full


@pytest.mark.timeout(600)
def test_tp2_pipelines_equal_one_process(run: tuple[Path, str]) -> None:
    """A whole-model TP-2 pipeline and a 2-stage one (3 + 5 microbatches) on 6 ranks match one process."""
    folder, _ = run
    expected, got = losses(folder / "ref"), losses(folder / "tp")
    assert len(got) == len(expected) == STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert abs(a - b) <= TOLERANCE * abs(b), f"step {step}: loss {a} vs reference {b}"
    assert_params_match(folder / "ref", folder / "tp")


def assert_params_match(ref_dir: Path, run_dir: Path) -> None:
    """Every final parameter (full tensors from the ranks' dumps) equals one process's (rel 1e-5)."""
    ref_state = load_file(str(ref_dir / "state" / "node0.safetensors"))
    params = merged_params(run_dir)
    assert set(params) == {k for k in ref_state if ".param." in k}
    for key, tensor in params.items():
        got_t, ref_t = _without_key_bias(key, tensor), _without_key_bias(key, ref_state[key])
        assert relative_diff(got_t, ref_t) <= TOLERANCE, key


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", ["tiny-gpt2"], indirect=True)  # the run launched with GPT-2's ranks
def test_recoveries_changing_tp_degree_move_state_exactly(run: tuple[Path, str]) -> None:
    """Reconfiguring TP 2 -> 1 -> 2 (in-node and across nodes) and rebinding kept shards moves every
    parameter, moment and step count bit for bit, and the run still equals one process."""
    folder, _ = run
    rec = folder / "rec"
    expected, got = losses(folder / "rec-ref"), losses(rec)
    assert len(got) == len(expected) == RECOVERY_STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert abs(a - b) <= TOLERANCE * abs(b), f"step {step}: loss {a} vs reference {b}"
    for generation in range(1, len(SWITCHES) + 1):
        before: dict[str, torch.Tensor] = {}
        for path in sorted((rec / "state").glob(f"gen{generation}-before-rank*.safetensors")):
            for key, tensor in load_file(str(path)).items():
                if key in before:  # replicas (other pipelines, TP copies) are identical
                    assert torch.equal(before[key], tensor), (generation, key, path.name)
                before.setdefault(key, tensor)
        after = [
            load_file(str(p))
            for p in sorted((rec / "state").glob(f"gen{generation}-after-rank*.safetensors"))
        ]
        assert len(after) == NODES * SLOTS
        moved = {key for state in after for key in state}
        assert moved == set(before), generation  # every layer is still held somewhere
        for state in after:
            for key, tensor in state.items():
                assert torch.equal(tensor, before[key]), (generation, key)
    assert_params_match(folder / "rec-ref", rec)


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
