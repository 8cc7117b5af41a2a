"""Standalone launch helpers: the torchrun rendezvous store and one plan agreed by every rank.

Assumptions:
    * Each process is one node (node id = rank), as in ``torchrun --standalone``.
    * Rank 0 alone computes the plan (profiling may be measured, hence not bit-reproducible on
      other ranks) and publishes it as JSON in the store; every rank then uses the same plan.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from oobleck.errors import ConfigError
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.runtime.config import JobConfig
from oobleck.runtime.engine.adapters import ModelAdapter
from oobleck.runtime.engine.comm import default_device
from oobleck.runtime.engine.precision import resolve_precision
from oobleck.runtime.engine.profiler import cached_profile, estimate_profile

PLAN_KEY = "oobleck/standalone/plan"
PROFILE_CACHE_ENV = "OOBLECK_PROFILE_CACHE"


def rendezvous_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The store of a torchrun-style launch (``MASTER_ADDR``/``MASTER_PORT``); in-memory for one process.

    Raises:
        ConfigError: several processes but no ``MASTER_ADDR``/``MASTER_PORT``.
    """
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        return dist.HashStore()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(
                f"environment {name} is not set; launch with torchrun or set it (WORLD_SIZE={world_size})"
            )
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
    return store


def job_profile(job: JobConfig, adapter: ModelAdapter) -> ModelProfile:
    """The job's profile: analytic from parameter counts, or measured on this rank's device (cached).

    Both count memory as the engine holds it for the job's precision (resolved for this rank's
    device, as the engine resolves it), exact accumulation and activation checkpointing.
    """
    device = default_device(int(os.environ.get("LOCAL_RANK", "0")))
    precision = resolve_precision(job.precision, device)
    exact, recompute = job.optim.exact_accumulation, job.activation_checkpointing
    if job.profile == "measured":
        cache = os.environ.get(PROFILE_CACHE_ENV, str(Path.home() / ".cache" / "oobleck" / "profiles"))
        return cached_profile(
            adapter,
            microbatch_size=job.microbatch_size,
            sequence_length=job.data.sequence_length,
            device=device,
            cache_dir=cache,
            precision=precision,
            exact_accumulation=exact,
            activation_checkpointing=recompute,
        )
    return estimate_profile(
        adapter,
        microbatch_size=job.microbatch_size,
        sequence_length=job.data.sequence_length,
        hardware=job.hardware_spec(),
        precision=precision,
        exact_accumulation=exact,
        activation_checkpointing=recompute,
    )


def plan_for_world(
    job: JobConfig,
    adapter: ModelAdapter,
    world_size: int,
    *,
    store: dist.Store,
    rank: int,
    plan_file: str | None = None,
) -> Plan:
    """One plan for nodes ``0 .. world_size-1``, computed by rank 0 and shared through ``store``.

    Args:
        job: the job config.
        adapter: the model.
        world_size: processes (= nodes).
        store: the rendezvous store.
        rank: this process.
        plan_file: a plan JSON (``Plan.to_dict``) to use instead of planning.

    Returns:
        The plan; every rank returns an equal object.

    Raises:
        ConfigError: an unreadable plan file, or one that does not use exactly the world's nodes.
        PlanningError: no plan exists for this many nodes.
    """
    if rank == 0:
        plan = _load_plan(plan_file) if plan_file else _plan(job, adapter, world_size)
        if plan.nodes != tuple(range(world_size)):
            raise ConfigError(
                f"{plan_file or 'plan'}: uses nodes {list(plan.nodes)}, expected 0..{world_size - 1}"
            )
        if plan.global_microbatches != job.global_microbatches or plan.microbatch_size != job.microbatch_size:
            raise ConfigError(
                f"{plan_file or 'plan'}: global_microbatches={plan.global_microbatches} and "
                f"microbatch_size={plan.microbatch_size} must match the job "
                f"({job.global_microbatches}, {job.microbatch_size})"
            )
        store.set(PLAN_KEY, json.dumps(plan.to_dict()))
    data = json.loads(store.get(PLAN_KEY).decode())
    return Plan.from_dict(data, gpus_per_node=1)


def _load_plan(path: str) -> Plan:
    try:
        return Plan.from_dict(json.loads(Path(path).read_text()), gpus_per_node=1)
    except FileNotFoundError:
        raise ConfigError(f"--plan {path}: file not found") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--plan {path}: not a valid plan ({error})") from None


def job_planner(job: JobConfig, profile: ModelProfile, max_nodes: int) -> Planner:
    """The planner every worker of ``job`` plans with: one device per stage (one worker per slot)."""
    return Planner(
        profile,
        job.hardware_spec(),
        fault_tolerance=job.fault_tolerance,
        global_microbatches=job.global_microbatches,
        microbatch_size=job.microbatch_size,
        max_nodes=max_nodes,
        max_gpus_per_stage=1,
    )


def _plan(job: JobConfig, adapter: ModelAdapter, world_size: int) -> Plan:
    return job_planner(job, job_profile(job, adapter), world_size).plan(tuple(range(world_size)))
