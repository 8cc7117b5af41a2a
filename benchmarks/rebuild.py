"""Process-group rebuild: seconds vs ranks, world-wide sequential groups (before) vs rounds (after).

Scenario: what one generation of the runtime does after a failure, ``Comm.init`` (a fresh gloo
world on a prefixed store), the plan's groups, then a world all_reduce so that a figure ends when the
last rank is done (the runtime has no such barrier: its first step's collectives wait alike), on
4, 8, 12 and 16 CPU processes of this machine. The groups are those the runtime builds for a real
plan of that size: a 16-layer tied GPT-2 (width 64) planned with ``fault_tolerance: 1`` on nodes so
small (``device_memory_bytes``, scanned per size) that the plan has two deep pipelines, the
heterogeneous ones a recovery produces where there are any (their per-layer DP groups overlap, the
worst case for sequential creation); pipeline neighbours use the default group and get none.
- before: the code before this change, every rank calls ``new_group`` for every group, in order;
- after: ``Comm.new_groups``, member-only groups in rounds of disjoint groups.
Both run in the same processes, interleaved per repeat; the median of the repeats is reported.
``depth`` is the group creations on the critical path: the chain of groups sharing a rank in list
order (before) or the rounds (after).
Fits: ``groups phase = a + b x groups`` and ``= a + b x depth`` per mode;
``world init = a + b x ranks`` (wall, and CPU seconds of the busiest rank); the power law
``rebuild ~ ranks^p`` of each mode; and the recovery model's three constants
(``RecoveryConstants.rebuild_groups_*``), printed with the model's error per size.

    python benchmarks/rebuild.py [--sizes 4 8 12 16] [--repeats 3] [--json runs/rebuild.json]

NOTE: on a shared 2-core machine 16 processes contend for the CPU; figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oobleck.planning.groups import creation_rounds, sequential_depth  # noqa: E402
from oobleck.runtime.config import job_config_from_dict  # noqa: E402
from oobleck.runtime.engine.adapters import build_adapter  # noqa: E402
from oobleck.runtime.engine.comm import Comm  # noqa: E402
from oobleck.runtime.engine.profiler import estimate_profile  # noqa: E402
from oobleck.runtime.engine.standalone import job_planner  # noqa: E402
from oobleck.runtime.engine.topology import build_topology  # noqa: E402

MODEL = {
    "arch": "gpt2",
    "n_layer": 14,
    "n_embd": 64,
    "n_head": 4,
    "n_positions": 128,
    "tie_word_embeddings": True,
}
TIMEOUT = timedelta(seconds=60)
MODES = ("before", "after")
JOB = {
    "data": {"source": "pydoc", "sequence_length": 32},
    "global_batch": 64,
    "microbatch_size": 2,
    "steps": 1,
    "seed": 1,
    "fault_tolerance": 1,
    "hardware": "cpu",
    "profile": "analytic",
}
DEVICE_MEMORY_BYTES = {4: 17_193_984, 8: 10_672_128, 12: 6_917_120, 16: 5_187_840}
"""Node memory per size: found by scanning 1.1..8x the model state over ranks/2 for the plan with two
pipelines and the most groups (the deepest, heterogeneous where the planner makes them so)."""


def plan_rank_sets(ranks: int) -> tuple[list[tuple[int, ...]], str]:
    """The runtime's group rank sets for the job's plan on ``ranks`` one-slot nodes.

    Returns:
        The rank sets (topology order) and a one-line description of the plan.
    """
    job = job_config_from_dict({"model": MODEL, **JOB, "device_memory_bytes": DEVICE_MEMORY_BYTES[ranks]})
    adapter = build_adapter(job.model)
    profile = estimate_profile(adapter, microbatch_size=2, sequence_length=32, hardware=job.hardware_spec())
    plan = job_planner(job, profile, ranks).plan(tuple(range(ranks)))
    tied = tuple((t.source_layer, t.layer) for t in adapter.tied)
    topology = build_topology(
        plan, {n: n for n in range(ranks)}, num_layers=adapter.num_layers, tied_pairs=tied
    )
    stages = [p.template.num_stages for p in plan.pipelines]
    return list(topology.group_rank_sets()), f"pipelines of {stages} stages"


def world_sequential(comm: Comm, rank_sets: list[tuple[int, ...]]) -> None:
    """The rebuild before this change: every rank creates every group, one after another."""
    for ranks in rank_sets:
        comm.call("new_group", dist.new_group, list(ranks), timeout=comm.timeout)


def _barrier(store: dist.Store, key: str, count: int) -> None:
    store.add(key, 1)
    while store.add(key, 0) < count:
        time.sleep(0.002)


def worker(rank: int, port: int, trials: list[dict]) -> None:
    """One process: run every trial it is a rank of; all processes meet between trials."""
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    processes = max(trial["ranks"] for trial in trials)
    probe = torch.zeros(1)
    for index, trial in enumerate(trials):
        _barrier(store, f"start{index}", processes)
        if rank >= trial["ranks"]:
            continue
        sets = [tuple(s) for s in trial["sets"]]
        comm = Comm("gloo", TIMEOUT)
        t0, c0 = time.perf_counter(), time.process_time()
        comm.init(
            dist.PrefixStore(f"trial{index}", store),
            rank=rank,
            world_size=trial["ranks"],
            device=probe.device,
        )
        t1, c1 = time.perf_counter(), time.process_time()
        if trial["mode"] == "before":
            world_sequential(comm, sets)
        else:
            comm.new_groups(sets)
        t2 = time.perf_counter()
        comm.run("last rank done", dist.all_reduce, probe)
        t3 = time.perf_counter()
        comm.destroy()
        store.set(f"result{index}/{rank}", json.dumps([t1 - t0, t2 - t1, t3 - t0, c1 - c0]))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``; returns ``(a, b, r2)``."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = mean_y - b * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, 1 - residual / total if total else 1.0


def power_exponent(ranks: list[float], seconds: list[float]) -> float:
    """Slope of ``log seconds`` against ``log ranks``."""
    import math

    return fit_line([math.log(r) for r in ranks], [math.log(max(s, 1e-9)) for s in seconds])[1]


def run(sizes: list[int], repeats: int) -> dict:
    """Spawn the processes, run the trials, collect per-rank phases; medians per (size, mode)."""
    shapes = {n: plan_rank_sets(n) for n in sizes}
    trials = [
        {"ranks": n, "mode": mode, "sets": shapes[n][0]}
        for repeat in range(repeats)
        for n in sizes
        for mode in (MODES if repeat % 2 == 0 else MODES[::-1])
    ]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    spec = Path(os.environ.get("TMPDIR", "/tmp")) / f"rebuild-trials-{os.getpid()}.json"
    spec.write_text(json.dumps(trials))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, __file__, "--worker", "--port", str(port), "--trials", str(spec)]
    procs = [
        subprocess.Popen([*argv, "--rank", str(r)], env=env, start_new_session=True)
        for r in range(max(sizes))
    ]
    try:
        for proc in procs:
            proc.wait(timeout=170)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        spec.unlink(missing_ok=True)
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"worker exit codes: {[proc.returncode for proc in procs]}")
    samples: dict[tuple[int, str], list[list[float]]] = {}
    for index, trial in enumerate(trials):
        per_rank = [json.loads(store.get(f"result{index}/{r}")) for r in range(trial["ranks"])]
        # The critical path of each phase: the slowest rank's.
        samples.setdefault((trial["ranks"], trial["mode"]), []).append(
            [max(p[i] for p in per_rank) for i in range(4)]
        )
    rows = []
    for n in sizes:
        sets = shapes[n][0]
        for mode in MODES:
            init_s, groups_s, rebuild_s, init_cpu_s = (
                statistics.median(s[i] for s in samples[n, mode]) for i in range(4)
            )
            rows.append(
                {
                    "ranks": n,
                    "mode": mode,
                    "plan": shapes[n][1],
                    "groups": len(sets),
                    "rounds": len(creation_rounds(sets)) if mode == "after" else sequential_depth(sets),
                    "init_s": init_s,
                    "groups_s": groups_s,
                    "rebuild_s": rebuild_s,
                    "init_cpu_s": init_cpu_s,
                }
            )
    return {"sizes": sizes, "repeats": repeats, "rows": rows}


def report(result: dict) -> None:
    """Print the table, the fits and the constants the recovery model takes."""
    rows = result["rows"]
    print(
        f"{'ranks':>5} {'mode':>6} {'groups':>6} {'depth':>6} {'init s':>8} {'groups s':>9} "
        f"{'rebuild s':>9}  plan"
    )
    for r in rows:
        print(
            f"{r['ranks']:>5} {r['mode']:>6} {r['groups']:>6} {r['rounds']:>6} {r['init_s']:>8.4f} "
            f"{r['groups_s']:>9.4f} {r['rebuild_s']:>9.4f}  {r['plan']}"
        )
    fits = {}
    for mode, count in (("before", "groups"), ("before", "rounds"), ("after", "rounds")):
        mine = [r for r in rows if r["mode"] == mode]
        a, b, r2 = fit_line([r[count] for r in mine], [r["groups_s"] for r in mine])
        r2_n = fit_line([r["ranks"] for r in mine], [r["groups_s"] for r in mine])[2]
        p = power_exponent([r["ranks"] for r in mine], [r["rebuild_s"] for r in mine])
        fits[f"{mode}_vs_{count}"] = {"a_s": a, "b_s": b, "r2": r2, "rebuild_ranks_exponent": p}
        label = "depth" if count == "rounds" else count
        print(
            f"{mode:>6}: groups phase = {a:.4f} + {b:.4f} x {label} s (R^2 {r2:.2f}; "
            f"vs ranks: R^2 {r2_n:.2f}); rebuild ~ ranks^{p:.2f}"
        )
    a, b, r2 = fit_line([r["ranks"] for r in rows], [r["init_s"] for r in rows])
    a_c, b_c, r2_c = fit_line([r["ranks"] for r in rows], [r["init_cpu_s"] for r in rows])
    print(f"world init (wall) = {a:.4f} + {b:.5f} x ranks s (R^2 {r2:.2f})")
    print(f"world init (CPU of the busiest rank) = {a_c:.4f} + {b_c:.5f} x ranks s (R^2 {r2_c:.2f})")
    # The recovery model's constants (oobleck/planning/recovery.py documents each derivation):
    after = [r for r in rows if r["mode"] == "after"]
    per_group = statistics.median(r["groups_s"] / max(r["rounds"], 1) for r in after)
    fixed = max(
        0.0, statistics.median(r["rebuild_s"] - b_c * r["ranks"] - per_group * r["rounds"] for r in after)
    )
    fits["model"] = {
        "rebuild_groups_fixed_s": fixed,
        "rebuild_groups_per_rank_s": b_c,
        "rebuild_groups_per_group_s": per_group,
        "wall_per_rank_s": b,
    }
    print(
        "recovery model: rebuild = fixed + per_rank x ranks + per_group x rounds with "
        f"rebuild_groups_fixed_s={fixed:.3f} rebuild_groups_per_rank_s={b_c:.5f} "
        f"rebuild_groups_per_group_s={per_group:.4f}"
    )
    for r in after:
        model = fixed + b_c * r["ranks"] + per_group * r["rounds"]
        print(f"  {r['ranks']:>3} ranks: measured {r['rebuild_s']:.4f} s, model {model:.4f} s")
    result["fits"] = fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows and fits here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rank, args.port, json.loads(args.trials.read_text()))
        return 0
    start = time.monotonic()
    result = run(args.sizes, args.repeats)
    report(result)
    print(f"benchmark wall time {time.monotonic() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
