"""Standalone launch helpers: the torchrun rendezvous store and one plan agreed by every rank.

Assumptions:
    * A node is ``LOCAL_WORLD_SIZE`` consecutive ranks (node id = rank // it), as torchrun numbers
      ranks; one process = one node when it is 1.
    * ``fault_tolerance`` is ignored (planned as 0, with a notice): nothing regroups a torchrun world.
    * Rank 0 alone computes the plan (profiling may be measured, hence not bit-reproducible on
      other ranks) and publishes it as JSON in the store; every rank then uses the same plan.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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

logger = logging.getLogger(__name__)

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
    gpus_per_node: int = 1,
) -> Plan:
    """One plan for nodes ``0 .. world_size/gpus_per_node - 1``, computed by rank 0, shared through ``store``.

    Args:
        job: the job config.
        adapter: the model.
        world_size: processes (= nodes x ``gpus_per_node``).
        store: the rendezvous store.
        rank: this process.
        plan_file: a plan JSON (``Plan.to_dict``) to use instead of planning.
        gpus_per_node: processes per node (torchrun's ``LOCAL_WORLD_SIZE``); node id = rank // it.

    Returns:
        The plan; every rank returns an equal object.

    Raises:
        ConfigError: an unreadable plan file, or one that does not use exactly the world's nodes.
        PlanningError: no plan exists for this many nodes.
    """
    if world_size % gpus_per_node:
        raise ConfigError(
            f"environment WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={gpus_per_node}; "
            "launch the same number of processes on every node"
        )
    nodes = world_size // gpus_per_node
    if rank == 0:
        plan = (
            _load_plan(plan_file, gpus_per_node) if plan_file else _plan(job, adapter, nodes, gpus_per_node)
        )
        if plan.nodes != tuple(range(nodes)):
            raise ConfigError(
                f"{plan_file or 'plan'}: uses nodes {list(plan.nodes)}, expected 0..{nodes - 1}"
            )
        if plan.global_microbatches != job.global_microbatches or plan.microbatch_size != job.microbatch_size:
            raise ConfigError(
                f"{plan_file or 'plan'}: global_microbatches={plan.global_microbatches} and "
                f"microbatch_size={plan.microbatch_size} must match the job "
                f"({job.global_microbatches}, {job.microbatch_size})"
            )
        store.set(PLAN_KEY, json.dumps(plan.to_dict()))
    data = json.loads(store.get(PLAN_KEY).decode())
    return Plan.from_dict(data, gpus_per_node=gpus_per_node)


def _load_plan(path: str, gpus_per_node: int) -> Plan:
    try:
        return Plan.from_dict(json.loads(Path(path).read_text()), gpus_per_node=gpus_per_node)
    except FileNotFoundError:
        raise ConfigError(f"--plan {path}: file not found") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--plan {path}: not a valid plan ({error})") from None


def job_planner(job: JobConfig, profile: ModelProfile, max_nodes: int, gpus_per_node: int = 1) -> Planner:
    """The planner every worker of ``job`` plans with: up to ``tensor_parallel.max_degree`` devices per stage.

    Args:
        job: The job.
        profile: The layer profile every worker agreed on.
        max_nodes: Most nodes a plan may use.
        gpus_per_node: Devices (workers) per node, from :func:`~oobleck.runtime.control.devices.node_devices`.

    Returns:
        A planner pricing the job's hardware entry with ``gpus_per_node`` devices per node.

    Raises:
        ConfigError: the TP degree exceeds the devices per node (a stage cannot span nodes).
    """
    hardware = dataclasses.replace(job.hardware_spec(), gpus_per_node=gpus_per_node)
    job.tensor_parallel.check_fits(hardware.gpus_per_node)
    return Planner(
        profile,
        hardware,
        fault_tolerance=job.fault_tolerance,
        global_microbatches=job.global_microbatches,
        microbatch_size=job.microbatch_size,
        max_nodes=max_nodes,
        max_gpus_per_stage=job.tensor_parallel.max_degree,
        templates=job.pipelines or None,
    )


def standalone_job(job: JobConfig) -> JobConfig:
    """``job`` as the standalone worker plans it: ``fault_tolerance`` dropped, with a one-line notice.

    A torchrun launch has no agent to regroup the survivors, so the planner's ``f + 1`` spare
    templates would only cost throughput (and refuse worlds too small for them) for no protection.

    Args:
        job: The job as configured.

    Returns:
        ``job`` itself when ``fault_tolerance`` is 0, else a copy with 0.
    """
    if job.fault_tolerance == 0:
        return job
    logger.warning(
        "fault_tolerance=%d ignored: a torchrun (standalone) launch cannot survive a failure; "
        "run under `oobleck master` for fault tolerance",
        job.fault_tolerance,
    )
    return dataclasses.replace(job, fault_tolerance=0)


def _plan(job: JobConfig, adapter: ModelAdapter, nodes: int, gpus_per_node: int) -> Plan:
    job = standalone_job(job)
    planner = job_planner(job, job_profile(job, adapter), nodes, gpus_per_node)
    return planner.plan(tuple(range(nodes)))
