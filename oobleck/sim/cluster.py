"""The simulated cluster: replays a failure trace as membership changes and interrupts the job.

Assumptions:
    * The trace is already validated (:mod:`oobleck.sim.failures`): every ``lost`` node is up and
      every ``joined`` node is down when its event fires.
    * One job runs on the cluster; a membership change reaches it as ``process.interrupt(event)``
      at the instant it happens, whatever the job is doing (training, checkpointing, recovering).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from oobleck.sim.failures import FailureTrace

SimTime = float
"""Simulated time: float seconds since the job started."""


class Cluster:
    """Node membership over simulated time; starts its failure-injection process on creation."""

    def __init__(self, env: simpy.Environment, trace: FailureTrace, horizon_s: SimTime) -> None:
        self.env = env
        self.trace = trace
        self.horizon_s = horizon_s
        self._alive = set(trace.initial_nodes)
        self._sorted = tuple(sorted(self._alive))
        self._job: simpy.Process | None = None
        self.process = env.process(self.inject_failures())

    @property
    def alive(self) -> tuple[int, ...]:
        """Node ids up now, sorted."""
        return self._sorted

    def attach(self, job: simpy.Process) -> None:
        """Name the process that receives membership changes (call before ``env.run``)."""
        self._job = job

    def inject_failures(self) -> Generator[simpy.Event, Any, None]:
        """Apply each trace event at its time and interrupt the job with it as the cause."""
        for event in self.trace.events:
            if event.time_s >= self.horizon_s:
                return
            yield self.env.timeout(event.time_s - self.env.now)
            self._alive.difference_update(event.lost)
            self._alive.update(event.joined)
            self._sorted = tuple(sorted(self._alive))
            # NOTE: interrupting a finished process raises; the job only ends at the horizon.
            if self._job is not None and self._job.is_alive:
                self._job.interrupt(event)
