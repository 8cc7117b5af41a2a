"""One rank of a multi-device-node engine run: ``python -m tests.integration.tp_ranks CONFIG PLAN RUN_DIR``.

The test driver of ``test_engine_tensor_parallel.py``: node = rank // slots, local rank = rank % slots
(``OOBLECK_TEST_SLOTS``), as one worker per slot would be; rank 0 writes ``metrics.jsonl`` and
every rank dumps its (local-shard) state to ``state/rank<r>.safetensors``.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from safetensors.torch import save_file

from oobleck.planning.plan import Plan
from oobleck.runtime.config import load_job_config
from oobleck.runtime.engine import Engine, rendezvous_store


def main(config: str, plan_file: str, run_dir: str) -> None:
    """Train the job under the given plan on this rank, then dump metrics and state."""
    rank, world, slots = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "OOBLECK_TEST_SLOTS"))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    faulthandler.dump_traceback_later(float(os.environ.get("OOBLECK_TEST_STACKS_S", "100")), exit=True)
    job = load_job_config(config)
    plan = Plan.from_dict(json.loads(Path(plan_file).read_text()), gpus_per_node=slots)
    out = Path(run_dir)
    store = rendezvous_store(rank, world, timedelta(seconds=60))
    engine = Engine(job, node=rank // slots, local_rank=rank % slots, timeout=timedelta(seconds=60))
    engine.configure(plan, 0, {node: node * slots for node in range(world // slots)}, store)
    try:
        for step in range(job.steps):
            metrics = engine.train_step(step)
            if rank == 0:
                with (out / "metrics.jsonl").open("a") as log:
                    log.write(json.dumps({"step": step, "loss": metrics.loss}) + "\n")
        (out / "state").mkdir(exist_ok=True)
        save_file(engine.state_tensors(), str(out / "state" / f"rank{rank}.safetensors"))
    finally:
        engine.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
