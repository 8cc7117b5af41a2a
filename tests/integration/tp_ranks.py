"""One rank of multi-device-node engine runs: ``python -m tests.integration.tp_ranks RUNS_JSON``.

The test driver of ``test_engine_tensor_parallel.py``. ``RUNS_JSON`` lists runs
(``{"config", "plan", "run_dir"}``) trained one after another by the same processes, so the
interpreter and torch start once for all of them (the test's CPU budget). Node = rank // slots,
local rank = rank % slots (``OOBLECK_TEST_SLOTS``), as one worker per slot would be; rank 0 writes
``metrics.jsonl`` and every rank dumps its (full-tensor) state to ``state/rank<r>.safetensors``.
A run with ``"switch": [[step, plan], ...]`` reconfigures every rank (no node lost) to ``plan``
before ``step``, dumping its full state right before and after as ``state/gen<g>-{before,after}-rank<r>``.
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
import torch.distributed as dist
from safetensors.torch import save_file

from oobleck.planning.plan import Plan
from oobleck.runtime.config import load_job_config
from oobleck.runtime.engine import Engine, plan_transfers, rendezvous_store


def load_plan(plan_file: str, slots: int) -> Plan:
    return Plan.from_dict(json.loads(Path(plan_file).read_text()), gpus_per_node=slots)


def train(
    store: dist.Store, config: str, plan_file: str, run_dir: str, slots: int, switch: list[list[object]]
) -> None:
    """Train one job under the given plan on this rank (switching plans as listed), then dump state."""
    rank, world = dist_env()
    job = load_job_config(config)
    plan = load_plan(plan_file, slots)
    out = Path(run_dir)
    (out / "state").mkdir(exist_ok=True)
    engine = Engine(job, node=rank // slots, local_rank=rank % slots, timeout=timedelta(seconds=120))
    rank_of_node = {node: node * slots for node in range(world // slots)}
    engine.configure(plan, 0, rank_of_node, store)
    switches = {int(str(step)): str(new) for step, new in switch}
    try:
        for step in range(job.steps):
            if step in switches:
                generation = engine.generation + 1
                save_file(
                    engine.state_tensors(),
                    str(out / "state" / f"gen{generation}-before-rank{rank}.safetensors"),
                )
                new_plan = load_plan(switches[step], slots)
                transfers = plan_transfers(plan, new_plan, alive_nodes=sorted(rank_of_node))
                engine.reconfigure(new_plan, transfers, generation, rank_of_node, store)
                save_file(
                    engine.state_tensors(),
                    str(out / "state" / f"gen{generation}-after-rank{rank}.safetensors"),
                )
                plan = new_plan
            metrics = engine.train_step(step)
            if rank == 0:
                with (out / "metrics.jsonl").open("a") as log:
                    log.write(json.dumps({"step": step, "loss": metrics.loss}) + "\n")
        save_file(engine.state_tensors(), str(out / "state" / f"rank{rank}.safetensors"))
    finally:
        engine.close()


def dist_env() -> tuple[int, int]:
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def main(runs_file: str) -> None:
    """Run every listed job on this rank (all ranks take the same list)."""
    rank, world = dist_env()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    faulthandler.dump_traceback_later(float(os.environ.get("OOBLECK_TEST_STACKS_S", "500")), exit=True)
    store = rendezvous_store(rank, world, timedelta(seconds=120))
    for index, run in enumerate(json.loads(Path(runs_file).read_text())):
        prefixed = dist.PrefixStore(f"run{index}", store)
        slots = int(os.environ["OOBLECK_TEST_SLOTS"])
        train(prefixed, run["config"], run["plan"], run["run_dir"], slots, run.get("switch", []))


if __name__ == "__main__":
    main(sys.argv[1])
