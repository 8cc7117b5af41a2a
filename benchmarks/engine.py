"""Benchmark: oobleck's 1F1B engine vs ``torch.distributed.pipelining.Schedule1F1B``, side by side.

Same model (a GPT-2 built by our adapter, same seed), same stage split (one stage per process),
same microbatches, same data, gloo on CPU (NCCL on GPU), and the same optimizer work after each
step on both sides: global gradient-norm clipping at ``GRAD_CLIP`` (the GPT-2 recipe's 1.0; torch's
side all-reduces the stages' squared norms, as torchtitan clips a pipeline), then AdamW. Ours
computes that norm on every step anyway (it is logged, and fp16 needs it for overflows), so a peer
without clipping would be timed without work every real run does. GPT-2 ties its head to its
embedding, so torch's side also sums the tied gradient over the first and last stage (Megatron's
embedding group, :func:`tied_weight_sync`), as ours does: else it would train another model.
Rounds alternate the two systems so machine noise hits both alike; the median step time of each
is reported with the throughput ratio (goal: ours >= 1.0x, issue 12), next to the load average
(the machine may be shared: a figure taken under load is noisy, so compare ratios of one run).

Both run in ``--precision`` (fp32 default; bf16/fp16: autocast over fp32 parameters, ours through the
job key, torch's schedule inside ``torch.autocast``). ``--model gpt2-124m`` takes GPT-2 124M's shape
(12 blocks, width 768, 12 heads) instead of ``--layers/--width/--heads``, and shorter defaults
(sequence 32, 2 timed steps x 3 rounds instead of 64, 5 x 4) so that each precision finishes in
under 4 minutes on 2 CPU cores (bf16 on a CPU without bf16 instructions is several times slower
than fp32); ``--seq/--steps/--rounds`` still override them.

Run: ``python benchmarks/engine.py [--stages 2] [--layers 4] [--width 256] [--microbatches 8]
[--precision bf16] [--model gpt2-124m]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

SEED = 0
GRAD_CLIP = 1.0
"""Global gradient-norm clip of both systems (nanoGPT's and torchtitan's default)."""
PRESETS = {"gpt2-124m": {"layers": 12, "width": 768, "heads": 12}}
"""Model shapes ``--model`` selects (they override ``--layers``, ``--width`` and ``--heads``)."""
RUN_DEFAULTS = {"seq": 64, "steps": 5, "rounds": 4}
"""Defaults of ``--seq/--steps/--rounds``."""
PRESET_RUN_DEFAULTS = {"gpt2-124m": {"seq": 32, "steps": 2, "rounds": 3}}
"""Shorter defaults of a preset (each precision in < 4 min on 2 CPU cores); explicit flags win."""


def job_config(args: argparse.Namespace):
    from oobleck.runtime.config import job_config_from_dict

    return job_config_from_dict(
        {
            "model": {"arch": "gpt2", "n_layer": args.layers, "n_embd": args.width, "n_head": args.heads},
            "data": {"sequence_length": args.seq},
            "global_batch": args.microbatches * args.mbs,
            "microbatch_size": args.mbs,
            "steps": 1000,
            "optim": {"lr": 1e-4, "grad_clip": GRAD_CLIP, "exact_accumulation": False},
            "seed": SEED,
            "precision": args.precision,
        },
        source="benchmark",
    )


def split_plan(num_layers: int, stages: int, microbatches: int, mbs: int):
    from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage

    bounds = [round(i * num_layers / stages) for i in range(stages + 1)]
    template = PipelineTemplate(
        num_nodes=stages,
        gpus_per_node=1,
        stages=tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ),
    )
    pipeline = Pipeline(template=template, nodes=tuple(range(stages)), microbatches=microbatches)
    return Plan(
        pipelines=(pipeline,),
        global_microbatches=microbatches,
        microbatch_size=mbs,
        fault_tolerance=0,
        iteration_time_s=1.0,
    ), bounds


def stage_of(layer: int, bounds: list[int]) -> int:
    """The stage holding ``layer`` under the split ``bounds``."""
    return next(i for i, (a, b) in enumerate(itertools.pairwise(bounds)) if a <= layer < b)


def tied_weight_sync(ties, module: nn.Sequential, bounds: list[int], rank: int) -> Callable[[], None]:
    """Megatron's embedding-group all-reduce for torch's side: sum a tied weight's gradients.

    GPT-2 ties ``lm_head.weight`` (last stage) to the embedding (first stage). Without this sum the
    schedule trains an untied model, the two copies drifting apart, and skips a 154 MB all-reduce a
    step that ours must do. Every rank calls this (``new_group`` is collective).
    """
    first, end = bounds[rank], bounds[rank + 1]
    reductions: list[Callable[[], None]] = []
    for tie in ties:
        sides = ((tie.source_layer, tie.source_name), (tie.layer, tie.name))
        holders = sorted({stage_of(layer, bounds) for layer, _ in sides})
        group = dist.new_group(holders) if len(holders) > 1 else None
        params = [
            dict(module[layer - first].named_parameters())[name]
            for layer, name in sides
            if first <= layer < end
        ]
        if len(params) == 2:
            reductions.append(lambda a=params[0], b=params[1]: _share_sum(a, b))
        elif params:
            reductions.append(lambda p=params[0], g=group: dist.all_reduce(p.grad, group=g))

    def sync() -> None:
        for reduce in reductions:
            reduce()

    return sync


def _share_sum(a: nn.Parameter, b: nn.Parameter) -> None:
    total = a.grad + b.grad
    a.grad, b.grad = total, total.clone()


def worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    """One stage: build both systems on the same process group, then time them in alternating rounds."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from oobleck.runtime.engine import Engine
    from oobleck.runtime.engine.executor import microbatch_loss

    torch.set_num_threads(args.threads)
    job = job_config(args)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=timedelta(seconds=120))
    engine = Engine(job, node=rank, timeout=timedelta(seconds=120))
    plan, bounds = split_plan(engine.adapter.num_layers, args.stages, args.microbatches, args.mbs)
    engine.configure(plan, 0, {n: n for n in range(args.stages)}, store)

    module = nn.Sequential(
        *[engine.adapter.build_layer(i, SEED, engine.device) for i in range(bounds[rank], bounds[rank + 1])]
    )
    stage = PipelineStage(module, rank, args.stages, engine.device)
    schedule = Schedule1F1B(stage, args.microbatches, loss_fn=microbatch_loss)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
    tied = tied_weight_sync(engine.adapter.tied, module, bounds, rank)

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def torch_step(step: int) -> None:
        tokens = engine.dataset.batch(engine.sampler.step_samples(step), engine.device)
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(engine.device.type, dtype=dtypes[args.precision])
            if args.precision in dtypes
            else contextlib.nullcontext()
        )
        with autocast:
            _schedule_step(tokens)
        tied()
        clip_global_norm()
        optimizer.step()

    def clip_global_norm() -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        square = torch.nn.utils.get_total_norm(grads, foreach=True).double().pow(2)
        dist.all_reduce(square)
        torch.nn.utils.clip_grads_with_norm_(module.parameters(), GRAD_CLIP, square.sqrt(), foreach=True)

    def _schedule_step(tokens: torch.Tensor) -> None:
        if rank == 0:
            schedule.step(tokens[:, :-1])
        elif rank == args.stages - 1:
            schedule.step(target=tokens[:, 1:])
        else:
            schedule.step()

    times: dict[str, list[float]] = {"oobleck": [], "torch": []}
    step = 0
    for round_index in range(args.rounds):
        for name in ("oobleck", "torch"):
            for repeat in range(args.steps + 1):
                dist.barrier()
                start = time.perf_counter()
                if name == "oobleck":
                    engine.train_step(step)
                else:
                    torch_step(step)
                if engine.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                step += 1
                if repeat > 0 or round_index > 0:  # first step of the first round is warm-up
                    times[name].append(elapsed)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=2, help="pipeline stages = processes (default: 2)")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--width", type=int, default=256, help="hidden size (default: 256)")
    parser.add_argument("--seq", type=int, help="tokens per sample (default: 64; gpt2-124m: 32)")
    parser.add_argument("--mbs", type=int, default=4, help="samples per microbatch (default: 4)")
    parser.add_argument("--microbatches", type=int, default=8, help="microbatches per step (default: 8)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default: 5; gpt2-124m: 2)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default: 4; gpt2-124m: 3)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (default: 1)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="both systems (default: fp32)"
    )
    parser.add_argument("--model", choices=tuple(PRESETS), help="a preset shape, e.g. gpt2-124m (2 stages)")
    args = parser.parse_args()
    for key, value in PRESETS.get(args.model or "", {}).items():
        setattr(args, key, value)
    for key, value in {**RUN_DEFAULTS, **PRESET_RUN_DEFAULTS.get(args.model or "", {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "times.json")
        mp.spawn(worker, args=(args, port, out), nprocs=args.stages, join=True)
        times = json.loads(Path(out).read_text())
    samples = args.microbatches * args.mbs
    ours, theirs = statistics.median(times["oobleck"]), statistics.median(times["torch"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"GPT-2 {args.layers}x{args.width}, seq {args.seq}, {args.stages} stages, {args.precision}, "
        f"{args.microbatches} microbatches x {args.mbs}, {device}, {len(times['oobleck'])} steps each "
        f"({args.rounds} rounds of {args.steps} + 1 steps, the first step warm-up)"
    )
    print(
        f"wall {time.perf_counter() - start:.0f} s; load average (1 min) {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end, on {os.cpu_count()} CPUs"
    )
    print(f"{'system':<32}{'median step s':>14}{'samples/s':>12}{'min..max step s':>20}")
    for label, name, median in (
        ("oobleck engine (1F1B)", "oobleck", ours),
        ("torch pipelining Schedule1F1B", "torch", theirs),
    ):
        spread = f"{min(times[name]):.4f}..{max(times[name]):.4f}"
        print(f"{label:<32}{median:>14.4f}{samples / median:>12.1f}{spread:>20}")
    print(f"throughput ratio oobleck / torch = {theirs / ours:.3f}  (goal >= 1.0, issue 12)")


if __name__ == "__main__":
    main()
