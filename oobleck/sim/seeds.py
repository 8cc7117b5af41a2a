"""Several seeds per comparison: every policy on the same K traces, means with 95% intervals.

One seed is one failure trace; a single trace can draw far fewer or more failures than expected
(32 nodes x 24 h x 0.01 expects 7.7, seed 0 draws 1), so a table meant to be trusted reports the
mean over several seeds with its 95% confidence interval, and the failures each trace drew next
to their expectation.

Assumptions:
    * Seeds ``s0 .. s0+K-1``; seed ``s`` draws the same trace for every policy (common random
      numbers), so the per-seed ratio to oobleck pairs runs on one trace.
    * The interval is Student's t on the K per-seed values (normal approximation of their mean).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.errors import ConfigError
from oobleck.sim.config import SimulationConfig
from oobleck.sim.simulation import SimulationResult, simulate

REFERENCE = "oobleck"

_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Two-sided 95% Student-t quantiles for 1..10 degrees of freedom; beyond, the tabulated 2.09
(df <= 20), 2.04 (df <= 30) and the normal 1.96 (each rounded up, so intervals are never narrower)."""


def t_quantile_95(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom (>= 1)."""
    if dof <= len(_T_975):
        return _T_975[dof - 1]
    return 2.09 if dof <= 20 else 2.04 if dof <= 30 else 1.96


@dataclass(frozen=True, slots=True)
class Estimate:
    """Mean of per-seed values and the half-width of its 95% interval (``nan`` for one seed)."""

    mean: float
    half_width: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        finite = [value for value in values if math.isfinite(value)]
        if not finite:
            return cls(math.nan, math.nan)
        mean = statistics.fmean(finite)
        if len(finite) < 2:
            return cls(mean, math.nan)
        return cls(mean, t_quantile_95(len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite)))

    def to_dict(self) -> dict[str, float | None]:
        return {
            "mean": self.mean if math.isfinite(self.mean) else None,
            "ci95": self.half_width if math.isfinite(self.half_width) else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySummary:
    """One policy over the K seeds."""

    policy: str
    feasible: bool
    reason: str
    samples: Estimate
    samples_per_s: Estimate
    ratio: Estimate
    """Per-seed samples divided by oobleck's on the same trace."""
    ettr: Estimate
    recoveries: Estimate


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedsResult:
    """Every seed's simulation and the summary over them."""

    config: SimulationConfig
    runs: tuple[SimulationResult, ...]
    summaries: tuple[PolicySummary, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.config.seed for run in self.runs)

    @property
    def failures(self) -> tuple[int, ...]:
        """Node losses drawn by each seed's trace."""
        return tuple(run.trace.num_failures for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document of a ``--seeds`` run: config, per-seed results and the summary."""
        return {
            "config": {**self.config.to_dict(), "seeds": list(self.seeds)},
            "failures": list(self.failures),
            "expected_failures": _none_if_nan(expected_failures(self.config)),
            "summary": [
                {
                    "policy": s.policy,
                    "feasible": s.feasible,
                    "reason": s.reason,
                    **{
                        name: getattr(s, name).to_dict()
                        for name in ("samples", "samples_per_s", "ratio", "ettr", "recoveries")
                    },
                }
                for s in self.summaries
            ],
            "runs": [
                {"seed": run.config.seed, "results": [row.to_dict() for row in run.results]}
                for run in self.runs
            ],
        }


def expected_failures(config: SimulationConfig) -> float:
    """Expected node losses over the run for the configured failure model (``nan`` for a trace).

    Without repairs a node fails at most once: ``N (1 - e^{-lambda T})`` with ``lambda`` the
    node's total rate (its own plus its rack's). With repairs a node alternates up (mean
    ``1/lambda``) and down (mean ``R``), so it fails ``lambda T / (1 + lambda R)`` times (renewal
    approximation; exact as ``T`` grows). A rack failure counts each of its nodes.
    """
    if config.remove_every_minutes is not None:
        removals = min(
            config.nodes - config.remove_until_nodes, int(config.hours * 60 // config.remove_every_minutes)
        )
        return float(max(removals, 0))
    if config.trace is not None:
        return math.nan
    hours = config.hours
    rate = config.fail_rate + (config.rack_fail_rate if config.rack_size else 0.0)
    if config.repair_hours is None:
        return config.nodes * -math.expm1(-rate * hours)
    return config.nodes * rate * hours / (1.0 + rate * config.repair_hours)


def simulate_seeds(
    config: SimulationConfig,
    seeds: Sequence[int],
    *,
    run: Callable[[SimulationConfig], SimulationResult] = simulate,
) -> SeedsResult:
    """Simulate ``config`` once per seed (all its policies on that seed's trace) and summarise.

    Args:
        config: The comparison; its ``seed`` is replaced by each of ``seeds``.
        seeds: Failure-trace seeds (at least one, no repeats).
        run: The simulation of one seed (a caller may add experimental policies).

    Returns:
        The runs in seed order and one summary per policy.

    Raises:
        ConfigError: no seed or a repeated seed; or anything :func:`simulate` raises.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must name at least one seed, each once; got {list(seeds)}")
    runs = tuple(run(dataclasses.replace(config, seed=seed)) for seed in seeds)
    return SeedsResult(config=config, runs=runs, summaries=tuple(_summaries(runs)))


def _summaries(runs: Sequence[SimulationResult]) -> list[PolicySummary]:
    summaries = []
    for index, first in enumerate(runs[0].results):
        rows = [run.results[index] for run in runs]
        references = [_reference_samples(run) for run in runs]
        feasible = all(row.feasible for row in rows)
        summaries.append(
            PolicySummary(
                policy=first.policy,
                feasible=feasible,
                reason=next((row.reason for row in rows if not row.feasible), ""),
                samples=Estimate.of([row.samples for row in rows]),
                samples_per_s=Estimate.of([row.throughput_samples_per_s for row in rows]),
                ratio=Estimate.of(
                    [
                        row.samples / ref if ref else math.nan
                        for row, ref in zip(rows, references, strict=True)
                    ]
                ),
                ettr=Estimate.of([row.ettr for row in rows]),
                recoveries=Estimate.of([float(sum(row.recoveries.values())) for row in rows]),
            )
        )
    return summaries


def _reference_samples(run: SimulationResult) -> float:
    for row in run.results:
        if row.policy == REFERENCE and row.feasible:
            return row.samples
    return 0.0


def _none_if_nan(value: float) -> float | None:
    return value if math.isfinite(value) else None
