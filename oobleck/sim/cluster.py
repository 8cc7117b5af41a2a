"""The simulated cluster: replays a failure trace as membership changes and interrupts the job.

Assumptions:
    * The trace is already validated (:mod:`oobleck.sim.failures`): every ``lost`` node is up and
      every ``joined`` node is down when its event fires.
    * One job runs on the cluster; a membership change reaches it as ``process.interrupt(event)``
      at the instant it happens, whatever the job is doing (training, checkpointing, recovering).
"""

from __future__ import annotations

import bisect
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
        self._sorted_list = sorted(self._alive)
        """The nodes up, sorted, kept by bisection (re-sorting 16K ids per event showed in profiles)."""
        self._sorted = tuple(self._sorted_list)
        self._job: simpy.Process | None = None
        self.process = env.process(self.inject_failures())

    @property
    def alive(self) -> tuple[int, ...]:
        """Node ids up now, sorted."""
        return self._sorted

    def is_up(self, node: int) -> bool:
        """Whether ``node`` is up now."""
        return node in self._alive

    def attach(self, job: simpy.Process) -> None:
        """Name the process that receives membership changes (call before ``env.run``)."""
        self._job = job

    def inject_failures(self) -> Generator[simpy.Event, Any, None]:
        """Apply each trace event at its time and interrupt the job with it as the cause."""
        for event in self.trace.events:
            if event.time_s >= self.horizon_s:
                return
            yield self.env.timeout(event.time_s - self.env.now)
            # NOTE: the trace is validated: every lost node is up and every joined one is down.
            self._alive.difference_update(event.lost)
            self._alive.update(event.joined)
            for node in event.lost:
                del self._sorted_list[bisect.bisect_left(self._sorted_list, node)]
            for node in event.joined:
                bisect.insort(self._sorted_list, node)
            self._sorted = tuple(self._sorted_list)
            # NOTE: interrupting a finished process raises; the job only ends at the horizon.
            if self._job is not None and self._job.is_alive:
                self._job.interrupt(event)
