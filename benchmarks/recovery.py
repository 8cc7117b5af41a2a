"""Recovery benchmark: one node killed mid-run, oobleck in place vs torchrun restart-all + checkpoint.

Scenario: tiny GPT-2 (examples/tiny_gpt2.yaml shape, f=1), 4 one-slot nodes on this machine, the
node of rank/node 2 SIGKILLed after step 5.
(a) oobleck: ``python -m oobleck.runtime.master --hostfile examples/hosts.local4`` recovers in place.
(b) torchrun: ``torchrun --standalone --nproc-per-node 4 --max-restarts 3`` runs this file in
    worker mode; every step each worker checkpoints (for fairness: no lost work), and after the
    kill torchrun restarts all four workers, which reload the last checkpoint.
Reported per mode: seconds from the kill to the next completed step, and total job seconds.
Goal (issue #5): oobleck >= 5x faster to recover.

    python benchmarks/recovery.py [--steps 30] [--kill-after 5] [--out runs/bench-recovery]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = """model: tiny-gpt2
data: {{source: pydoc, sequence_length: 32}}
global_batch: 16
microbatch_size: 2
steps: {steps}
optim: {{lr: 0.003, warmup_steps: 2, min_lr: 0.0003, weight_decay: 0.01, grad_clip: 1.0}}
seed: 1234
fault_tolerance: 1
hardware: cpu
profile: analytic
"""


def _loss_records(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r and "event" not in r]


def _measure(argv: list[str], log: Path, metrics: Path, kill_after: int, kill: Callable[[], None]) -> dict:
    """Run ``argv`` to the end, calling ``kill`` once step ``kill_after`` is done.

    Returns:
        The exit code, seconds from the kill to the next completed step, and total job seconds.
    """
    start = time.time()
    with log.open("w") as handle:
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
    t_kill = 0.0
    while proc.poll() is None:
        time.sleep(0.01)
        steps = _loss_records(metrics)
        if not t_kill and steps and steps[-1]["step"] >= kill_after:
            t_kill = time.time()
            kill()
    end = time.time()
    recovery_s = min(r["t"] for r in _loss_records(metrics) if r["t"] > t_kill) - t_kill
    return {"rc": proc.returncode, "recovery_s": recovery_s, "total_s": end - start}


def run_oobleck(out: Path, job: Path, kill_after: int) -> dict:
    """Mode (a): the elastic master; SIGKILL node 2's process group."""
    run_dir = out / "oobleck"
    argv = [sys.executable, "-m", "oobleck.runtime.master", "--hostfile", str(ROOT / "examples/hosts.local4")]
    argv += ["--config", str(job), "--run-dir", str(run_dir)]

    def kill() -> None:
        row = next(a for a in json.loads((run_dir / "agents.json").read_text()) if a["node"] == 2)
        os.killpg(row["agent_pid"], signal.SIGKILL)

    return _measure(argv, out / "oobleck.log", run_dir / "metrics.jsonl", kill_after, kill)


def run_torchrun(out: Path, job: Path, kill_after: int) -> dict:
    """Mode (b): torchrun restart-all with a checkpoint every step; SIGKILL rank 2."""
    run_dir = out / "torchrun"
    run_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    argv += ["--max-restarts", "3", __file__, "--worker", "--config", str(job), "--out", str(run_dir)]

    def kill() -> None:
        os.kill(int((run_dir / "rank2.pid").read_text()), signal.SIGKILL)

    return _measure(argv, out / "torchrun.log", run_dir / "metrics.jsonl", kill_after, kill)


def torchrun_worker(args: argparse.Namespace) -> None:
    """One torchrun worker: resume from the last checkpoint, train, checkpoint every step."""
    from datetime import timedelta

    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.control.checkpoint import latest_complete, write_shard
    from oobleck.runtime.engine import Engine, plan_for_world, rendezvous_store

    job = load_job_config(args.config)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out = Path(args.out)
    (out / f"rank{rank}.pid").write_text(str(os.getpid()))
    store = rendezvous_store(rank, world, timedelta(seconds=60))
    engine = Engine(job, node=rank, timeout=timedelta(seconds=60))
    plan = plan_for_world(job, engine.adapter, world, store=store, rank=rank)
    engine.configure(
        plan, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), {n: n for n in range(world)}, store
    )
    step = 0
    checkpoint = latest_complete(out / "ckpt", engine.adapter.num_layers)
    if checkpoint is not None:
        engine.load_state_tensors(checkpoint.load())
        step = checkpoint.step
    while step < job.steps:
        metrics = engine.train_step(step)
        step += 1
        if engine.info is not None and engine.info.pipeline == 0:
            write_shard(
                out / "ckpt",
                step,
                node=rank,
                local_rank=0,
                layers=list(engine.info.layers),
                tensors=engine.state_tensors(),
            )
        if rank == 0:
            with (out / "metrics.jsonl").open("a") as handle:
                handle.write(
                    json.dumps({"step": metrics.step, "loss": metrics.loss, "t": time.time()}) + "\n"
                )
    engine.close()


def main() -> int:
    """Run both modes side by side and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="steps per job")
    parser.add_argument("--kill-after", type=int, default=5, help="kill once this step completed")
    parser.add_argument("--out", default="runs/bench-recovery", help="output folder (replaced)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torchrun_worker(args)
        return 0
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    job = out / "job.yaml"
    job.write_text(JOB.format(steps=args.steps))
    oobleck = run_oobleck(out, job, args.kill_after)
    torchrun = run_torchrun(out, job, args.kill_after)
    print(f"{'mode':<28}{'kill -> next step (s)':>24}{'total job (s)':>16}{'rc':>5}")
    for name, result in (("oobleck (in place)", oobleck), ("torchrun restart-all+ckpt", torchrun)):
        print(f"{name:<28}{result['recovery_s']:>24.3f}{result['total_s']:>16.2f}{result['rc']:>5}")
    ratio = torchrun["recovery_s"] / oobleck["recovery_s"]
    print(f"recovery speed-up: {ratio:.1f}x (goal >= 5x)")
    (out / "result.json").write_text(json.dumps({"oobleck": oobleck, "torchrun": torchrun, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
