"""Worker entry point: ``python -m oobleck.runtime.worker --config job.yaml --run-dir DIR``.

Standalone mode (no fault tolerance) for users who already have a launcher: it reads the torchrun
environment (``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), treats each ``LOCAL_WORLD_SIZE`` consecutive ranks as one node of that many devices
(node id = rank // LOCAL_WORLD_SIZE, device ``cuda:LOCAL_RANK``), plans heterogeneous pipelines with
the planning core and trains. ``torchrun --standalone --nproc-per-node 4 -m oobleck.runtime.worker ...``
and the same with ``--nproc-per-node 1`` produce the same losses. Rank 0 appends one JSON line per step to
``<run_dir>/metrics.jsonl``. Every line is prefixed ``[rank R]`` and also written to the worker's own
``<run_dir>/logs/node<N>/rank<LOCAL_RANK>.log`` (``oobleck.runtime.worker_logging``).

When ``OOBLECK_CONTROL`` is set (the elastic agent sets it), the worker hands over to
``oobleck.runtime.elastic.main(args)`` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from oobleck.errors import ConfigError, OobleckError
from oobleck.runtime.worker_logging import configure_worker_logging, log_setup

if TYPE_CHECKING:
    from oobleck.runtime.engine.custom_model import CustomModel

logger = logging.getLogger(__name__)

CONTROL_ENV = "OOBLECK_CONTROL"
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
"""torchrun's per-worker error file (``@record`` layout), written by :func:`record_error`."""


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line (shared with the elastic hand-off, which receives ``args``)."""
    parser = argparse.ArgumentParser(
        prog="python -m oobleck.runtime.worker",
        description="Train one job on the processes of a torchrun-style launch (one process = one node).",
        epilog="example: torchrun --standalone --nproc-per-node 4 -m oobleck.runtime.worker "
        "--config examples/tiny_gpt2.yaml --run-dir runs/demo",
    )
    parser.add_argument("--config", required=True, help="job YAML file")
    parser.add_argument("--run-dir", required=True, help="output folder (metrics.jsonl, ledger/, state/)")
    parser.add_argument(
        "--plan", help="use this plan JSON (Plan.to_dict) instead of planning (default: plan)"
    )
    parser.add_argument(
        "--dump-state", action="store_true", help="write each node's final layers to <run_dir>/state/"
    )
    parser.add_argument("--timeout-s", type=float, default=120.0, help="collective timeout (default: 120 s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return parser


def main(argv: Sequence[str] | None = None, *, model: CustomModel | None = None) -> int:
    """Parse, then train (standalone) or hand over to the elastic runtime; returns the exit code.

    Args:
        argv: The command line (default: ``sys.argv[1:]``).
        model: A user's own model and templates (``oobleck.api.main``); None: the job's HF adapter.
    """
    args = build_parser().parse_args(argv)
    label, log_file = log_setup(os.environ, Path(args.run_dir))
    configure_worker_logging(label=label, log_file=log_file, debug=args.debug)
    if os.environ.get(CONTROL_ENV):
        from oobleck.runtime import elastic

        return int(elastic.main(args, model=model) or 0)
    try:
        run_standalone(args, model=model)
    except OobleckError as error:
        record_error(error)
        if args.debug:
            raise
        sys.stderr.write(f"error: {error}\n")
        return 2
    except Exception as error:
        record_error(error)
        raise
    return 0


def record_error(error: BaseException) -> None:
    """Write ``error`` to ``TORCHELASTIC_ERROR_FILE`` in torch's ``@record`` layout (torchrun reads it).

    Torch's own error handler writes it, so torchrun's summary names the error instead of
    ``error_file: <N/A>``; without the variable (not under torchrun) nothing is written.

    Args:
        error: The exception being handled.
    """
    if not os.environ.get(ERROR_FILE_ENV):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(error)


def run_standalone(args: argparse.Namespace, model: CustomModel | None = None) -> None:
    """Train ``args.config`` on the torchrun world; ``LOCAL_WORLD_SIZE`` processes (devices) per node.

    ``model`` is a user's own model (``oobleck.api``), trained instead of the job's HF adapter.

    Raises:
        ConfigError: a bad config, plan file or environment variable.
        PlanningError: the model fits on no plan for this many processes.
    """
    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.control.devices import node_devices

    job = load_job_config(args.config)  # NOTE: before the heavy imports, so config errors are instant.
    if model is not None:
        job = model.job_for(job)

    import torch
    from safetensors.torch import save_file

    from oobleck.runtime.engine import Engine, default_device, plan_for_world, rendezvous_store

    rank, local_rank, world_size = (_env_int(name, default) for name, default in _ENV)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", 1) or 1
    devices = node_devices(local_world_size, job.hardware, job.gpus_per_node, launcher="torchrun")
    if local_rank >= local_world_size or (world_size > 1 and world_size % local_world_size):
        raise ConfigError(
            f"environment LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world_size}, "
            f"WORLD_SIZE={world_size}: expected LOCAL_RANK < LOCAL_WORLD_SIZE dividing WORLD_SIZE"
        )
    if "OMP_NUM_THREADS" not in os.environ:
        # NOTE: like torchrun, do not let every process of a node spin on every core: intra-op
        # threads of co-located CPU workers contend and slow small kernels down by 10-100x.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        logger.info("effective config: %s", json.dumps(job.to_dict(), sort_keys=True))
    store = rendezvous_store(rank, world_size, timedelta(seconds=args.timeout_s))
    node = rank // devices
    engine = Engine(
        job,
        node=node,
        local_rank=local_rank,
        device=default_device(local_rank),
        timeout=timedelta(seconds=args.timeout_s),
        model=model,
    )
    plan = plan_for_world(
        job, engine.adapter, world_size, store=store, rank=rank, plan_file=args.plan, gpus_per_node=devices
    )
    if rank == 0:
        (run_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
    engine.configure(plan, 0, {n: n * devices for n in range(world_size // devices)}, store)
    ledger = _ledger_file(run_dir, rank) if job.data.ledger else None
    try:
        for step in range(job.steps):
            metrics = engine.train_step(step)
            if rank == 0:
                record = {k: v for k, v in metrics.to_dict().items() if k not in ("sample_ids", "pipeline")}
                with (run_dir / "metrics.jsonl").open("a") as out:
                    out.write(json.dumps({**record, "t": time.time()}) + "\n")
                logger.info("step %d loss %.6f (%.3f s)", step, metrics.loss, metrics.step_s)
            if ledger is not None and metrics.sample_ids:
                entry = {"step": step, "generation": 0, "pipeline": metrics.pipeline}
                with ledger.open("a") as out:
                    out.write(json.dumps({**entry, "sample_ids": list(metrics.sample_ids)}) + "\n")
        if args.dump_state:
            (run_dir / "state").mkdir(exist_ok=True)
            save_file(engine.state_tensors(), str(run_dir / "state" / f"node{rank}.safetensors"))
    finally:
        engine.close()


_ENV = (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r}: expected an integer >= 0") from None
    if value < 0:
        raise ConfigError(f"environment {name}={raw!r}: expected an integer >= 0")
    return value


def _ledger_file(run_dir: Path, rank: int) -> Path:
    folder = run_dir / "ledger"
    folder.mkdir(exist_ok=True)
    return folder / f"node{rank}.jsonl"


if __name__ == "__main__":
    sys.exit(main())
