"""fp16: the dynamic loss scaler's state travels with recovery and checkpoints, never re-derived.

Issue #12 item 1 (fp16). Job: tiny GPT-2 (4 layers) in fp16, exact accumulation off, a starting
loss scale of 1024 that doubles after every 2 finite steps (``growth_interval: 2``), so the scale
and the good-step count change during the run. Reference: one process, one 1-stage pipeline.
Recovery run: nodes 0 and 1 train steps 0-2 as one 2-stage pipeline; then node 2, a fresh engine
(a fresh scaler: scale 1024, count 0) joins, receives all four layers from nodes 0 and 1 and runs
a 1-stage pipeline next to them for steps 3-5. After step 2 the fault-free scaler holds scale 2048
and a good-step count of 1, so a joiner that re-derived its scaler would disagree with the others on
the loss scale (its gradients would come out 2x off) and on when the scale next doubles.

Claims: on every rank, every step's loss scale and good-step count equal the reference's, every
loss is within ``LOSS_TOLERANCE_REL['fp16']`` of it, and every rank's checkpoint tensors carry the
reference's final scaler state.

This file is also the child script: ``python test_fp16_scaler_recovery.py MODE RANK PORT CONFIG OUT``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, JOIN_AT = 6, 3
INITIAL_SCALE, GROWTH_INTERVAL = 1024.0, 2


def _plan(pipelines: list[tuple[list[tuple[int, int]], int]], nodes: list[list[int]]):
    """A plan of hand-made pipelines: (stage layer bounds, microbatches) on the given nodes."""
    from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage

    built = []
    for (bounds, microbatches), members in zip(pipelines, nodes, strict=True):
        stages = tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(bounds)
        )
        template = PipelineTemplate(num_nodes=len(bounds), gpus_per_node=1, stages=stages)
        built.append(Pipeline(template=template, nodes=tuple(members), microbatches=microbatches))
    return Plan(
        pipelines=tuple(built),
        global_microbatches=sum(p.microbatches for p in built),
        microbatch_size=2,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def child(mode: str, rank: int, port: int, config: str, out: str) -> None:
    """One process: the one-process reference (``ref``) or one node of the join scenario (``join``)."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.engine import Engine, plan_transfers

    torch.set_num_threads(1)
    job = load_job_config(config)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=timedelta(seconds=120))
    engine = Engine(job, node=rank, timeout=timedelta(seconds=120))
    assert engine.scaler is not None, "an fp16 job has a loss scaler"
    record = Path(out) / f"node{rank}.jsonl"

    def train(steps: range) -> None:
        for step in steps:
            metrics = engine.train_step(step)
            assert engine.scaler is not None
            row = {"step": step, "loss": metrics.loss, "scale": engine.loss_scale}
            row["good_steps"] = engine.scaler.good_steps
            with record.open("a") as file:
                file.write(json.dumps(row) + "\n")

    if mode == "ref":
        engine.configure(_plan([([(0, 4)], 8)], [[0]]), 0, {0: 0}, store)
        train(range(STEPS))
    else:
        before = _plan([([(0, 2), (2, 4)], 8)], [[0, 1]])
        after = _plan([([(0, 2), (2, 4)], 4), ([(0, 4)], 4)], [[0, 1], [2]])
        transfers = plan_transfers(before, after, alive_nodes=[0, 1, 2])
        everyone = {0: 0, 1: 1, 2: 2}
        if rank < 2:
            engine.configure(before, 0, {0: 0, 1: 1}, store)
            train(range(JOIN_AT))
            engine.reconfigure(after, transfers, 1, everyone, store)
        else:  # the joiner: its rendezvous waits until nodes 0 and 1 have trained JOIN_AT steps
            engine.reconfigure(after, transfers, 1, everyone, store, source_plan=before)
            assert sorted(engine.layers) == [0, 1, 2, 3]
        train(range(JOIN_AT, STEPS))
    save_file(engine.state_tensors(), str(Path(out) / f"node{rank}.safetensors"))
    engine.close()


def _write_job(folder: Path) -> Path:
    job = {
        "model": "tiny-gpt2",
        "data": {"sequence_length": 16},
        "global_batch": 16,
        "microbatch_size": 2,
        "steps": STEPS,
        "optim": {"lr": 0.003, "warmup_steps": 1, "grad_clip": 1.0, "exact_accumulation": False},
        "seed": 11,
        "precision": "fp16",
        "precision_options": {"initial_loss_scale": INITIAL_SCALE, "growth_interval": GROWTH_INTERVAL},
    }
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    return config


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(300)
def test_joiner_takes_the_scaler_state_and_every_rank_matches_one_process(
    tmp_path: Path, launch_ranks: Callable[..., None]
) -> None:
    """A fresh node joining at step 3 holds the fault-free loss scale and count, as every rank does."""
    from safetensors.torch import load_file

    from oobleck.runtime.engine.precision import LOSS_TOLERANCE_REL

    config = _write_job(tmp_path)
    for mode, world in (("ref", 1), ("join", 3)):

        def argv(rank: int, port: int, mode: str = mode) -> list[str]:
            return [sys.executable, __file__, mode, str(rank), str(port), str(config), str(tmp_path / mode)]

        (tmp_path / mode).mkdir()
        launch_ranks(world, tmp_path / mode, argv, timeout_s=240.0)
    reference = _rows(tmp_path / "ref" / "node0.jsonl")
    scales = [(r["scale"], r["good_steps"]) for r in reference]
    # NOTE: the premise: the scale changed before the join and the count is mid-interval there.
    assert scales[JOIN_AT - 1] == (2 * INITIAL_SCALE, 1) and len(set(scales)) > 1
    for node, steps in ((0, range(STEPS)), (1, range(STEPS)), (2, range(JOIN_AT, STEPS))):
        rows = _rows(tmp_path / "join" / f"node{node}.jsonl")
        assert [r["step"] for r in rows] == list(steps)
        for row in rows:
            want = reference[row["step"]]
            assert (row["scale"], row["good_steps"]) == (want["scale"], want["good_steps"]), (node, row)
            assert abs(row["loss"] - want["loss"]) <= LOSS_TOLERANCE_REL["fp16"] * abs(want["loss"]), row
    final = load_file(str(tmp_path / "ref" / "node0.safetensors"))["scaler.state"]
    for node in range(3):
        state = load_file(str(tmp_path / "join" / f"node{node}.safetensors"))["scaler.state"]
        assert state.tolist() == final.tolist(), node


if __name__ == "__main__":
    _mode, _rank, _port, _config, _out = sys.argv[1:6]
    child(_mode, int(_rank), int(_port), _config, _out)
