"""Results of a simulated run: per-policy counters, the time breakdown and the timeline.

Assumptions:
    * The breakdown partitions the simulated time: its categories sum to the run's duration.
    * Samples accrue continuously while training (a step's samples count pro rata), and the samples
      of work that is later lost (the step in flight, or everything since the last checkpoint) are
      taken back, so ``samples == useful_s * plan throughput`` piecewise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

BREAKDOWN_KEYS: tuple[str, ...] = ("useful", "recovery", "lost", "checkpoint", "redundancy", "down")
"""Time categories: useful training, recovering (reconfigure/restart/failover), work lost or redone,
writing checkpoints, redundant computation (Bamboo), and down (too few nodes to run anything)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelinePoint:
    """The job's state from ``time_s`` until the next point."""

    time_s: float
    nodes_up: int
    nodes_used: int
    samples_per_s: float
    """Instantaneous training throughput; 0 while recovering, checkpointing or down."""
    min_pipeline_nodes: int
    """Nodes of the smallest pipeline of the configuration in use (0 when none)."""
    samples: float
    """Samples trained so far (after any rollback at ``time_s``); it grows by ``samples_per_s``
    until the next point, so lost work shows as a drop."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "time_s",
        "nodes_up",
        "nodes_used",
        "samples_per_s",
        "min_pipeline_nodes",
        "samples",
    )

    def to_list(self) -> list[float]:
        """Values in :attr:`COLUMNS` order (compact JSON for long timelines)."""
        return [getattr(self, name) for name in self.COLUMNS]


@dataclass(slots=True, kw_only=True)
class JobMetrics:
    """Mutable counters a simulated job updates as it runs."""

    samples: float = 0.0
    failures: int = 0
    breakdown_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BREAKDOWN_KEYS, 0.0))
    recoveries: dict[str, int] = field(default_factory=dict)
    recovery_durations_s: list[float] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)

    def mark(self, point: TimelinePoint) -> None:
        """Append ``point`` unless it only continues the last one (same state, samples on track)."""
        if self.timeline:
            last = self.timeline[-1]
            on_track = last.samples + last.samples_per_s * (point.time_s - last.time_s)
            same = (last.nodes_up, last.nodes_used, last.samples_per_s, last.min_pipeline_nodes) == (
                point.nodes_up,
                point.nodes_used,
                point.samples_per_s,
                point.min_pipeline_nodes,
            )
            if same and math.isclose(point.samples, on_track, rel_tol=1e-9, abs_tol=1e-6):
                return
            if last.time_s == point.time_s:
                self.timeline[-1] = point
                return
        self.timeline.append(point)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyResult:
    """What one policy achieved on the shared failure trace."""

    policy: str
    feasible: bool
    reason: str = ""
    """Why the policy cannot run this job (empty when feasible)."""
    duration_s: float
    samples: float = 0.0
    tokens: float = 0.0
    steady_samples_per_s: float = 0.0
    """Throughput of the initial configuration with its steady overhead, before any failure."""
    failures: int = 0
    recoveries: dict[str, int] = field(default_factory=dict)
    recovery_durations_s: tuple[float, ...] = ()
    """Outage lengths: from a loss to training again (chained recoveries count as one)."""
    breakdown_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BREAKDOWN_KEYS, 0.0))
    timeline: tuple[TimelinePoint, ...] = ()
    wall_s: float = 0.0
    """Wall-clock seconds this policy's simulation took (not in :meth:`to_dict`: not deterministic)."""

    @property
    def throughput_samples_per_s(self) -> float:
        return self.samples / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ettr(self) -> float:
        """Effective training time ratio: useful training seconds over the run's seconds."""
        return self.breakdown_s["useful"] / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def recovery_p50_s(self) -> float:
        return percentile(self.recovery_durations_s, 50)

    @property
    def recovery_p99_s(self) -> float:
        return percentile(self.recovery_durations_s, 99)

    def to_dict(self) -> dict[str, Any]:
        """The ``results[]`` entry of the ``--json`` schema."""
        return {
            "policy": self.policy,
            "feasible": self.feasible,
            "reason": self.reason,
            "samples": self.samples,
            "tokens": self.tokens,
            "throughput_samples_per_s": self.throughput_samples_per_s,
            "steady_samples_per_s": self.steady_samples_per_s,
            "ettr": self.ettr,
            "failures": self.failures,
            "recoveries": dict(sorted(self.recoveries.items())),
            "recovery_s": {
                "p50": _finite_or_none(self.recovery_p50_s),
                "p99": _finite_or_none(self.recovery_p99_s),
            },
            "breakdown_s": dict(self.breakdown_s),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
