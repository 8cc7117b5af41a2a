"""``oobleck plan --config job.yaml``: plan a training job as its workers would, and show stage memory.

With ``--config`` the model, hardware, f, batch and microbatch size come from the job file and the
planner is the workers' (one device per stage, the job's ``device_memory_bytes``), so the printed
plan is the one ``oobleck master`` would run on ``--nodes`` nodes. A job that does not fit is one
line with a node count and a ``device_memory_bytes`` that would (:mod:`oobleck.runtime.plan_fit`).

Assumptions:
    * Devices per node: the job's ``gpus_per_node``, else its hardware entry's, except on ``cpu``
      where agents' slots decide and ``--gpus-per-node`` (default 1) stands in for them.
    * A pretrained model's fields live in its checkpoint folder; only then is its profile built
      in-process with torch (``engine.profiler.estimate_profile``), which takes seconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.runtime.config import JobConfig, load_job_config
from oobleck.runtime.control.devices import required_slots, slots_refusal
from oobleck.runtime.job_plan import job_hardware, job_planner, job_profile
from oobleck.runtime.plan_fit import assess

#: Flags that a job file replaces, with what to do instead.
JOB_FLAGS: dict[str, str] = {
    "model": "set model in the job file",
    "hardware": "set hardware in the job file",
    "fault_tolerance": "set fault_tolerance in the job file",
    "global_batch": "set global_batch in the job file",
    "microbatch_size": "set microbatch_size in the job file",
    "max_gpus_per_stage": "jobs run one device per stage",
}
_MIB = float(1 << 20)


@dataclass(frozen=True, slots=True)
class JobPlanning:
    """What ``build_report`` needs, taken from a job file instead of the flags."""

    profile: ModelProfile
    hardware: HardwareSpec
    planner: Planner
    fault_tolerance: int
    global_batch: int
    microbatch_size: int


def refuse_job_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse planning flags given with ``--config`` (the job file's values would silently win).

    Raises:
        ConfigError: Naming the flag and what to do instead.
    """
    for name, fix in JOB_FLAGS.items():
        if getattr(args, name) != parser.get_default(name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: not used with --config {args.config}; {fix}")


def devices_per_node(job: JobConfig, flag: int | None) -> int:
    """Devices per node of the job's nodes (see the module's assumptions).

    Raises:
        ConfigError: ``--gpus-per-node`` below 1 or not what the job's hardware requires.
    """
    required = required_slots(job.hardware, job.gpus_per_node)
    gpus = flag if flag is not None else (required if required is not None else 1)
    if gpus < 1:
        raise ConfigError(f"--gpus-per-node must be >= 1, got {gpus}")
    refusal = slots_refusal(gpus, job.hardware, job.gpus_per_node)
    if refusal is not None:
        raise ConfigError(f"--gpus-per-node {gpus}: {refusal}")
    return gpus


def _profile(job: JobConfig) -> ModelProfile:
    profile = job_profile(job)
    if profile is not None:
        return profile
    # NOTE: only pretrained models (fields in their checkpoint) or an unreadable transformers get here.
    from oobleck.runtime.engine.adapters import build_adapter
    from oobleck.runtime.engine.profiler import estimate_profile

    return estimate_profile(
        build_adapter(job.model),
        microbatch_size=job.microbatch_size,
        sequence_length=job.data.sequence_length,
        hardware=job.hardware_spec(),
    )


def job_planning(path: str, nodes: int, join: int, gpus_flag: int | None) -> JobPlanning:
    """Load the job, check that it fits ``nodes`` nodes, and build the workers' planner.

    Args:
        path: The job YAML.
        nodes: ``--nodes``.
        join: ``--join`` (templates are generated up to ``nodes + join``).
        gpus_flag: ``--gpus-per-node``, or None.

    Raises:
        ConfigError: A bad job file, or a plan that does not fit (with the fixes).
    """
    job = load_job_config(path)
    gpus = devices_per_node(job, gpus_flag)
    profile = _profile(job)
    fit = assess(job, profile, nodes, gpus)
    if not fit.fits:
        raise ConfigError(fit.message(path))
    return JobPlanning(
        profile=profile,
        hardware=job_hardware(job, gpus),
        planner=job_planner(job, profile, nodes + join, gpus),
        fault_tolerance=job.fault_tolerance,
        global_batch=job.global_batch,
        microbatch_size=job.microbatch_size,
    )


def stage_memory_rows(plan: dict[str, Any], limit_bytes: int) -> list[tuple[str, ...]]:
    """One row per stage of each distinct pipeline shape of a plan: layers, devices, memory vs limit.

    Args:
        plan: ``Plan.to_dict()``.
        limit_bytes: Usable memory per device.

    Returns:
        Rows of (nodes per pipeline, stage, layers, devices, MiB per device, % of the limit).
    """
    rows: list[tuple[str, ...]] = []
    seen: set[tuple[tuple[int, int], ...]] = set()
    for pipeline in plan["pipelines"]:
        stages: Sequence[dict[str, Any]] = pipeline["stages"]
        shape = tuple((s["layers"][0], s["layers"][1]) for s in stages)
        if shape in seen:
            continue
        seen.add(shape)
        for index, stage in enumerate(stages):
            first, end = stage["layers"]
            per_device = stage["memory_bytes"]
            rows.append(
                (
                    str(len(pipeline["nodes"])),
                    str(index),
                    str(first) if first == end - 1 else f"{first}-{end - 1}",
                    str(stage["gpus"]),
                    f"{per_device / _MIB:,.2f}",
                    f"{100.0 * per_device / limit_bytes:.0f}%",
                )
            )
    return rows


def print_stage_memory(console: Console, plan: dict[str, Any], limit_bytes: int) -> None:
    """The plan's memory per stage against the usable device memory."""
    table = Table(title=f"Memory per stage (limit {limit_bytes / _MIB:,.2f} MiB usable per device)")
    for column in ("nodes/pipeline", "stage", "layers", "GPUs", "MiB/GPU", "of limit"):
        table.add_column(column, justify="left" if column == "layers" else "right")
    for row in stage_memory_rows(plan, limit_bytes):
        table.add_row(*row)
    console.print(table)
