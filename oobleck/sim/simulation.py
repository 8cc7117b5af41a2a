"""``simulate(config)``: run every policy on one shared failure trace and collect the results.

Assumptions:
    * The failure trace is drawn once from ``random.Random(config.seed)`` (or read from a file) and
      replayed unchanged for every policy: common random numbers.
    * The planning core is the only source of plans and costs; the planner is built once and shared.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import simpy

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.sim.base import JobContext, Policy
from oobleck.sim.cluster import Cluster
from oobleck.sim.config import SimulationConfig
from oobleck.sim.costs import checkpoint_bytes
from oobleck.sim.failures import (
    SECONDS_PER_HOUR,
    FailureTrace,
    generate_trace,
    periodic_removal_trace,
    read_trace,
)
from oobleck.sim.job import TrainingJob
from oobleck.sim.metrics import PolicyResult, TimelinePoint
from oobleck.sim.policies.bamboo import BambooPolicy
from oobleck.sim.policies.checkpoint import CheckpointPolicy
from oobleck.sim.policies.homogeneous import HomogeneousPlanner
from oobleck.sim.policies.oobleck import OobleckPolicy
from oobleck.sim.policies.varuna import VarunaPolicy

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]
"""Called with (policy name, fraction of simulated time done) a few dozen times per policy."""

PolicyFactory = Callable[[JobContext, HomogeneousPlanner], Policy]

_PROGRESS_TICKS = 50

POLICY_FACTORIES: dict[str, PolicyFactory] = {
    "oobleck": lambda context, _: OobleckPolicy(context),
    "checkpoint": CheckpointPolicy,
    "varuna": VarunaPolicy,
    "bamboo": BambooPolicy,
}
"""Core policies by name; experimental ones are passed to :func:`simulate` by the caller."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    """Every policy's result on one trace, with what is needed to reproduce it."""

    config: SimulationConfig
    profile: ModelProfile
    trace: FailureTrace
    min_nodes: int
    """n0: nodes of the smallest pipeline template."""
    results: tuple[PolicyResult, ...]
    wall_s: float
    """Wall-clock seconds the simulation took (not part of :meth:`to_dict`, which is deterministic)."""

    @property
    def seed(self) -> int:
        return self.config.seed

    def result(self, policy: str) -> PolicyResult:
        """The result of ``policy``.

        Raises:
            KeyError: ``policy`` was not simulated.
        """
        for result in self.results:
            if result.policy == policy:
                return result
        raise KeyError(f"policy {policy!r} was not simulated; have {[r.policy for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: ``config``, ``results`` and ``timeline``."""
        events = [[event.time_s, list(event.lost), list(event.joined)] for event in self.trace.events]
        return {
            "config": {**self.config.to_dict(), "min_nodes": self.min_nodes},
            "results": [result.to_dict() for result in self.results],
            "timeline": {
                "columns": list(TimelinePoint.COLUMNS),
                "policies": {r.policy: [point.to_list() for point in r.timeline] for r in self.results},
                "events": {"columns": ["time_s", "lost", "joined"], "rows": events},
            },
        }


def simulate(
    config: SimulationConfig,
    *,
    progress: ProgressCallback | None = None,
    extra_policies: dict[str, PolicyFactory] | None = None,
) -> SimulationResult:
    """Simulate ``config.policies`` (plus ``extra_policies``) on one failure trace.

    Args:
        config: The cluster, job, failure model and costs.
        progress: Optional callback for a progress bar.
        extra_policies: Further policies by name (e.g. from ``oobleck.sim.policies.experimental``),
            run after the configured ones.

    Returns:
        One result per policy, in order; a policy that cannot run this job at all is a result with
        ``feasible=False`` and the reason.

    Raises:
        ConfigError: unknown model or hardware, unreadable or invalid trace.
        PlanningError: the model fits on no node count of this cluster.
    """
    started = time.perf_counter()
    logger.info("simulating %s", config.to_dict())
    hardware = get_hardware(config.hardware)
    profile = resolve_profile(config.model, hardware, microbatch_size=config.microbatch_size)
    horizon_s = config.hours * SECONDS_PER_HOUR
    trace = _trace(config, horizon_s)
    node_rate, rack_size, rack_rate = _configured_rates(config)
    planner = Planner(
        profile,
        hardware,
        fault_tolerance=config.fault_tolerance,
        global_microbatches=config.global_microbatches,
        microbatch_size=config.microbatch_size,
        max_nodes=config.nodes,
    )
    context = JobContext(
        profile=profile,
        hardware=hardware,
        planner=planner,
        costs=config.costs,
        node_fail_rate_per_s=node_rate,
        rack_size=rack_size,
        rack_fail_rate_per_s=rack_rate,
        fault_tolerance=config.fault_tolerance,
        global_microbatches=config.global_microbatches,
        microbatch_size=config.microbatch_size,
        checkpoint_bytes=checkpoint_bytes(profile),
    )
    homogeneous = HomogeneousPlanner(context)
    factories = {name: POLICY_FACTORIES[name] for name in config.policies} | dict(extra_policies or {})
    results = tuple(
        _run_policy(factory(context, homogeneous), trace, horizon_s, profile, progress)
        for factory in factories.values()
    )
    return SimulationResult(
        config=dataclasses.replace(config),  # NOTE: a copy; notebooks mutate their config between runs.
        profile=profile,
        trace=trace,
        min_nodes=planner.min_nodes,
        results=results,
        wall_s=time.perf_counter() - started,
    )


def _trace(config: SimulationConfig, horizon_s: float) -> FailureTrace:
    """The shared trace: read from ``config.trace`` or drawn from ``random.Random(config.seed)``.

    Raises:
        ConfigError: an unreadable or invalid trace, or an empty one without ``allow_empty_trace``.
    """
    if config.remove_every_minutes is not None:
        every_s = config.remove_every_minutes * 60.0
        rng = random.Random(config.seed)
        return periodic_removal_trace(config.nodes, every_s, config.remove_until_nodes, rng).until(horizon_s)
    if config.trace is None:
        return generate_trace(config.failure_model(), config.nodes, config.hours, random.Random(config.seed))
    trace = read_trace(config.trace, config.nodes)
    if not trace.events and not config.allow_empty_trace:
        raise ConfigError(
            f"{config.trace}: the trace has no membership change; pass --allow-empty-trace to "
            "simulate a run without failures"
        )
    return trace.until(horizon_s)


def _configured_rates(config: SimulationConfig) -> tuple[float, int, float]:
    """The failure rates policies plan with (their checkpoint periods), from flags, never the trace.

    ``mtbf_hours`` (a replayed trace's expected cluster MTBF) overrides the per-node and per-rack
    rates; otherwise they are ``fail_rate`` and ``rack_fail_rate``.

    Returns:
        Node failures per node per second, nodes per rack (0: none), rack failures per rack per second.
    """
    mtbf_hours = config.mtbf_hours
    if mtbf_hours is None and config.remove_every_minutes is not None:
        mtbf_hours = config.remove_every_minutes / 60.0  # NOTE: the removal period is the configured MTBF.
    if mtbf_hours is not None:
        node_rate = 1.0 / (mtbf_hours * SECONDS_PER_HOUR * config.nodes)
        return node_rate, 0, 0.0
    rack_rate = config.rack_fail_rate / SECONDS_PER_HOUR if config.rack_size else 0.0
    return config.fail_rate / SECONDS_PER_HOUR, config.rack_size, rack_rate


def _run_policy(
    policy: Policy,
    trace: FailureTrace,
    horizon_s: float,
    profile: ModelProfile,
    progress: ProgressCallback | None,
) -> PolicyResult:
    started = time.perf_counter()
    try:
        config = policy.start(trace.initial_nodes)
    except PlanningError as error:
        logger.info("%s is infeasible: %s", policy.name, error)
        return PolicyResult(policy=policy.name, feasible=False, reason=str(error), duration_s=horizon_s)
    env = simpy.Environment()
    cluster = Cluster(env, trace, horizon_s)
    job = TrainingJob(env, cluster, policy, config)
    if progress is not None:
        env.process(_report_progress(env, policy.name, horizon_s, progress))
    env.run()
    metrics = job.metrics
    return PolicyResult(
        policy=policy.name,
        feasible=True,
        duration_s=horizon_s,
        samples=metrics.samples,
        tokens=metrics.samples * profile.sequence_length,
        steady_samples_per_s=config.samples_per_s,
        failures=metrics.failures,
        recoveries=dict(metrics.recoveries),
        recovery_durations_s=tuple(metrics.recovery_durations_s),
        breakdown_s=dict(metrics.breakdown_s),
        timeline=tuple(metrics.timeline),
        wall_s=time.perf_counter() - started,
    )


def _report_progress(
    env: simpy.Environment, name: str, horizon_s: float, progress: ProgressCallback
) -> Generator[simpy.Event, Any, None]:
    for tick in range(1, _PROGRESS_TICKS + 1):
        yield env.timeout(horizon_s / _PROGRESS_TICKS)
        progress(name, tick / _PROGRESS_TICKS)
