"""Does a job's plan fit its nodes, and if not, which ``device_memory_bytes`` or node count would.

The master asks this before starting agents and ``oobleck plan --config`` prints it. It plans
exactly as the workers do (:func:`~oobleck.runtime.job_plan.job_planner` with ``max_nodes`` = the
node count, one device per stage), so "fits" here means a worker's first plan will exist.

Assumptions:
    * With one device per stage a pipeline has at most one stage per layer, so no pipeline needs
      more than ``ceil(layers / gpus_per_node)`` nodes: that bounds the node-count search.
    * A run that resumes from a checkpoint plans with ``Planner.restart_plan`` (the largest
      ``f' <= f`` its nodes allow), as the workers do, so it needs only n0 nodes.
    * Needed memory is monotone in n0 (more memory never needs more nodes per pipeline), so the
      smallest ``device_memory_bytes`` is found by bisection, rounded up to a whole KiB.
"""

from __future__ import annotations

import dataclasses
import math

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.plan import Plan
from oobleck.planning.profile import ModelProfile
from oobleck.runtime.config import MAX_DEVICE_MEMORY_BYTES, JobConfig
from oobleck.runtime.job_plan import job_hardware, job_planner

_MIB = 1 << 20
_KIB = 1 << 10


@dataclasses.dataclass(frozen=True, slots=True)
class Fit:
    """The verdict on a job for ``nodes`` nodes of ``gpus_per_node`` devices."""

    nodes: int
    gpus_per_node: int
    fault_tolerance: int
    memory_limit_bytes: int
    """Usable memory per device the job plans with."""
    min_nodes: int | None
    """n0 at the job's memory on up to the search bound of nodes; None: no pipeline holds the model."""
    plan: Plan | None
    """The plan a worker would make on ``nodes`` nodes, or None when there is none."""
    restart: bool = False
    """Planned as a resumed run (``restart_plan``: f may be lowered, n0 nodes suffice)."""
    suggested_memory_bytes: int | None = None
    """Smallest ``device_memory_bytes`` that gives ``(f + 1) * n0 <= nodes``, when the job does not fit."""

    @property
    def fits(self) -> bool:
        """A plan exists and keeps ``f + 1`` pipelines on ``nodes`` nodes."""
        return self.plan is not None

    @property
    def needed_nodes(self) -> int | None:
        """``(f + 1) * n0`` (``n0`` for a restart): the fewest nodes that run the job, or None."""
        if self.min_nodes is None:
            return None
        return self.min_nodes if self.restart else (self.fault_tolerance + 1) * self.min_nodes

    def message(self, source: str) -> str:
        """One line saying why the job does not fit and what would (empty when it fits)."""
        if self.fits:
            return ""
        limit = f"{self.memory_limit_bytes / _MIB:,.1f} MiB usable per device"
        fixes = []
        if self.needed_nodes is not None:
            fixes.append(f"use >= {self.needed_nodes} nodes")
        if self.suggested_memory_bytes is not None:
            fixes.append(f"set device_memory_bytes: {self.suggested_memory_bytes}")
        if not fixes:
            fixes.append("use a smaller model, microbatch_size or sequence_length")
        if self.min_nodes is None:
            why = f"the model fits on no pipeline of {self.gpus_per_node}-device nodes ({limit})"
        elif self.restart:
            why = (
                f"resuming from a checkpoint needs n0 = {self.min_nodes} nodes "
                f"(one pipeline at {limit}), got {self.nodes}"
            )
        else:
            why = (
                f"fault_tolerance={self.fault_tolerance} needs (f+1)*n0 = {self.needed_nodes} nodes "
                f"(n0={self.min_nodes} nodes hold one pipeline at {limit}), got {self.nodes}"
            )
        return f"{source}: plan: {why}; {' or '.join(fixes)}"


def _plan(
    job: JobConfig, profile: ModelProfile, nodes: int, gpus_per_node: int, restart: bool
) -> Plan | None:
    try:
        planner = job_planner(job, profile, nodes, gpus_per_node)
        return (planner.restart_plan if restart else planner.plan)(tuple(range(nodes)))
    except PlanningError:
        return None


def _min_nodes(job: JobConfig, profile: ModelProfile, max_nodes: int, gpus_per_node: int) -> int | None:
    try:
        return job_planner(job, profile, max_nodes, gpus_per_node).min_nodes
    except PlanningError:
        return None


def _with_memory(job: JobConfig, device_memory_bytes: int) -> JobConfig:
    return dataclasses.replace(job, device_memory_bytes=device_memory_bytes)


def smallest_memory_bytes(
    job: JobConfig, profile: ModelProfile, nodes: int, gpus_per_node: int, *, restart: bool = False
) -> int | None:
    """Smallest ``device_memory_bytes`` (whole KiB) with which a worker's plan exists on ``nodes`` nodes.

    Args:
        job: The job (its other settings are kept).
        profile: The job's profile.
        nodes: Node count.
        gpus_per_node: Devices per node.
        restart: Plan as a resumed run (see :class:`Fit`).

    Returns:
        The bytes, or None when not even ``MAX_DEVICE_MEMORY_BYTES`` is enough (e.g. f too large
        for the node count whatever the memory).
    """
    high = MAX_DEVICE_MEMORY_BYTES // _KIB
    if _plan(_with_memory(job, high * _KIB), profile, nodes, gpus_per_node, restart) is None:
        return None
    low = 0  # infeasible (no memory)
    while high - low > 1:
        middle = (low + high) // 2
        if _plan(_with_memory(job, middle * _KIB), profile, nodes, gpus_per_node, restart) is None:
            low = middle
        else:
            high = middle
    return high * _KIB


def assess(
    job: JobConfig, profile: ModelProfile, nodes: int, gpus_per_node: int, *, restart: bool = False
) -> Fit:
    """Plan ``job`` on ``nodes`` nodes as its workers would and, when that fails, search for fixes.

    Args:
        job: The job.
        profile: Its profile (e.g. :func:`~oobleck.runtime.job_plan.job_profile`).
        nodes: Node count (the hostfile's, or ``--nodes``).
        gpus_per_node: Devices (workers) per node.
        restart: The run resumes from a checkpoint (see :class:`Fit`).

    Returns:
        The verdict; ``suggested_memory_bytes`` is set only when the plan does not fit.

    Raises:
        ConfigError: ``nodes`` or ``gpus_per_node`` below 1.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"plan: nodes={nodes} and gpus_per_node={gpus_per_node} must be >= 1")
    limit = job_hardware(job, gpus_per_node).usable_memory_bytes
    bound = max(nodes, math.ceil(profile.num_layers / gpus_per_node))
    min_nodes = _min_nodes(job, profile, bound, gpus_per_node)
    plan = _plan(job, profile, nodes, gpus_per_node, restart) if min_nodes is not None else None
    if plan is not None:
        return Fit(nodes, gpus_per_node, job.fault_tolerance, limit, min_nodes, plan, restart)
    memory = smallest_memory_bytes(job, profile, nodes, gpus_per_node, restart=restart)
    return Fit(nodes, gpus_per_node, job.fault_tolerance, limit, min_nodes, None, restart, memory)


def check_fit(
    job: JobConfig,
    profile: ModelProfile,
    nodes: int,
    gpus_per_node: int,
    source: str,
    *,
    restart: bool = False,
) -> None:
    """Refuse a job whose plan does not fit on ``nodes`` nodes (the master's preflight).

    ``restart``: the run resumes from a checkpoint (see :class:`Fit`).

    Raises:
        ConfigError: One line with the reason and the node count / ``device_memory_bytes`` that fit.
    """
    fit = assess(job, profile, nodes, gpus_per_node, restart=restart)
    if not fit.fits:
        raise ConfigError(fit.message(source))
