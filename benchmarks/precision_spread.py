"""Spread of per-step losses between two fault-free splits of one job, exact accumulation off.

Scenario: the same job (tiny GPT-2 or tiny LLaMA, seed 11, 16 samples per step) runs once as one
process and once as 4 processes in 2 heterogeneous pipelines (a 1-stage pipeline with 3
microbatches, a 3-stage pipeline with 5), in each precision. With ``optim.exact_accumulation``
off the two differ only by the order of float additions; the largest relative loss difference
over the steps is what ``oobleck.runtime.engine.precision.LOSS_TOLERANCE_REL`` is set from
(about 10x above it).

Covers: the measurement behind the tolerance of ``tests/integration/test_precision_tolerance.py``.

    python benchmarks/precision_spread.py [--steps 8] [--models tiny-gpt2,tiny-llama] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage

SEED = 11
MICROBATCH = 2
GLOBAL_MICROBATCHES = 8
SPLIT = [([(0, 4)], 3), ([(0, 1), (1, 3), (3, 4)], 5)]
"""The 4-process split: (stage layer bounds, microbatches) per pipeline, tiny presets have 4 layers."""


def make_plan(pipelines: list[tuple[list[tuple[int, int]], int]]) -> Plan:
    """A plan of hand-made templates; node ids 0..N-1 in order."""
    built, node = [], 0
    for bounds, microbatches in pipelines:
        stages = tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(bounds)
        )
        template = PipelineTemplate(num_nodes=len(bounds), gpus_per_node=1, stages=stages)
        nodes = tuple(range(node, node + len(bounds)))
        built.append(Pipeline(template=template, nodes=nodes, microbatches=microbatches))
        node += len(bounds)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=sum(p.microbatches for p in built),
        microbatch_size=MICROBATCH,
        fault_tolerance=0,
        iteration_time_s=1.0,
    )


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(folder: Path, model: str, precision: str, steps: int, plan: Plan) -> list[float]:
    """Run the job under ``plan`` (one process per stage) and return its per-step losses."""
    job = {
        "model": model,
        "data": {"source": "pydoc", "sequence_length": 16},
        "global_batch": GLOBAL_MICROBATCHES * MICROBATCH,
        "microbatch_size": MICROBATCH,
        "steps": steps,
        "optim": {"lr": 0.003, "warmup_steps": 1, "min_lr": 0.0003, "weight_decay": 0.01, "grad_clip": 1.0},
        "seed": SEED,
        "precision": precision,
    }
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    (folder / "plan.json").write_text(json.dumps(plan.to_dict()))
    world = sum(len(p.template.stages) for p in plan.pipelines)
    argv = [sys.executable, "-m", "oobleck.runtime.worker", "--config", str(folder / "job.yaml")]
    argv += ["--run-dir", str(folder / "run"), "--plan", str(folder / "plan.json")]
    port, procs = _port(), []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": "0"}
        # NOTE: one-device nodes, as under `torchrun --nnodes N --nproc-per-node 1`.
        env["LOCAL_WORLD_SIZE"] = "1"
        env.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        codes = [proc.wait(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if codes != [0] * world:
        raise SystemExit(f"{model} {precision}: exit codes {codes}")
    rows = (folder / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    parser.add_argument("--models", default="tiny-gpt2,tiny-llama", help="comma-separated presets")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions")
    args = parser.parse_args()
    whole = make_plan([([(0, 4)], GLOBAL_MICROBATCHES)])
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for precision in args.precisions.split(","):
                base = Path(tmp) / f"{model}-{precision}"
                one = run(base / "one", model, precision, args.steps, whole)
                split = run(base / "split", model, precision, args.steps, make_plan(SPLIT))
                spread = max(abs(a - b) / abs(b) for a, b in zip(split, one, strict=True))
                print(f"{model:<12} {precision:<5} max relative loss spread {spread:.3e}", flush=True)
                print("  one  ", " ".join(f"{x:.6f}" for x in one), flush=True)
                print("  split", " ".join(f"{x:.6f}" for x in split), flush=True)


if __name__ == "__main__":
    main()
