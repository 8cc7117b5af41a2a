"""Failure-rate sweeps: how each policy's throughput falls as nodes fail more often.

A sweep runs the simulator once per (model, failure rate, seed) with every policy on the same
trace, and keeps one number per policy: throughput over the whole simulated duration (samples/s,
failures and recoveries included), averaged over the seeds. The figure sets the policies side by
side and divides each by oobleck.

Assumptions:
    * Rates are independent node failures per node per hour, the simulator's ``fail_rate``.
    * The same seeds are used at every rate, so neighbouring points differ by the rate, not by luck;
      a few seeds smooth out traces that happen to have far fewer or more losses than expected.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from oobleck.errors import ConfigError
from oobleck.sim.config import SimulationConfig
from oobleck.sim.sweep import SweepGrid, run_sweep
from oobleck.viz.style import new_figure, policy_color

HARDWARE_LIKE_RATE = 2.7e-4
"""Failures per node per hour implied by Meta's published cluster MTTFs: the gentle end of a sweep."""

REFERENCE_POLICY = "oobleck"


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """One policy's outcome at one model and failure rate."""

    model: str
    fail_rate: float
    """Failures per node per hour."""
    policy: str
    feasible: bool
    samples_per_s: float
    """Throughput over the whole run, failures included, mean over seeds (0 when infeasible)."""
    failures: float
    """Node losses in the shared trace, mean over seeds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureSweep:
    """Every point of a sweep, with the shared configuration it varied."""

    base: SimulationConfig
    """The configuration every run started from (its ``model`` and ``fail_rate`` were replaced)."""
    models: tuple[str, ...]
    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    points: tuple[SweepPoint, ...]

    @property
    def policies(self) -> tuple[str, ...]:
        return self.base.policies

    def throughput(self, model: str, policy: str) -> tuple[float, ...]:
        """Samples/s of ``policy`` on ``model`` at each rate, in rate order (``nan`` if infeasible)."""
        by_rate = {
            point.fail_rate: point.samples_per_s if point.feasible else math.nan
            for point in self.points
            if point.model == model and point.policy == policy
        }
        return tuple(by_rate[rate] for rate in self.rates)

    def ratio_to_reference(self, model: str, policy: str) -> tuple[float, ...]:
        """``policy``'s throughput divided by oobleck's at each rate (``nan`` where undefined)."""
        reference = self.throughput(model, REFERENCE_POLICY)
        return tuple(
            value / ref if ref > 0 else math.nan
            for value, ref in zip(self.throughput(model, policy), reference, strict=True)
        )


def sweep_rates(nodes: int, *, count: int, every_minutes: float = 10.0) -> tuple[float, ...]:
    """Log-spaced failure rates from hardware-like to one lost node every ``every_minutes``.

    The upper end is a cluster-wide rate (``60 / every_minutes`` losses per hour over ``nodes``
    nodes), turned into the per-node rate the simulator takes.

    Args:
        nodes: Cluster size.
        count: Number of rates (at least 2), both ends included.
        every_minutes: Mean minutes between losses in the cluster at the upper end.

    Returns:
        Rates in failures per node per hour, ascending.

    Raises:
        ConfigError: ``count < 2``, or an upper end below the hardware-like rate.
    """
    high = 60.0 / every_minutes / nodes
    if count < 2 or high <= HARDWARE_LIKE_RATE:
        raise ConfigError(
            f"sweep_rates: need count >= 2 and one loss every {every_minutes} min on {nodes} nodes to "
            f"exceed {HARDWARE_LIKE_RATE}/node/h; got count={count}, upper rate {high:.3g}"
        )
    ratio = (high / HARDWARE_LIKE_RATE) ** (1 / (count - 1))
    return (*(HARDWARE_LIKE_RATE * ratio**index for index in range(count - 1)), high)


def sweep_failure_rates(
    base: SimulationConfig,
    *,
    models: Sequence[str],
    rates: Sequence[float],
    seeds: Sequence[int] = (0,),
    workers: int = 1,
    use_ray: bool = False,
) -> FailureSweep:
    """Simulate every model at every rate and seed, all of ``base.policies`` on one trace per run.

    The runs are the cells of :func:`oobleck.sim.sweep.run_sweep` (``python -m oobleck.sim
    sweep``), so they go to a process pool with ``workers > 1`` or to Ray with ``use_ray``.

    Args:
        base: Cluster, duration, policies and costs shared by every run (its seed is replaced).
        models: Catalogue model names (or profile paths).
        rates: Failures per node per hour.
        seeds: Failure-trace seeds to average over.
        workers: Local processes running the cells (1: this process).
        use_ray: Run the cells on a local Ray instance.

    Returns:
        The sweep, one point per (model, rate, policy).

    Raises:
        ConfigError: a bad model name or rate (from the simulator), or no seed.
    """
    if not seeds:
        raise ConfigError("sweep_failure_rates: seeds must name at least one seed")
    grid = SweepGrid(models=tuple(models), nodes=(base.nodes,), fail_rates=tuple(rates), seeds=tuple(seeds))
    rows = run_sweep(base, grid, workers=workers, use_ray=use_ray).rows
    points = []
    for model in models:
        for rate in rates:
            cell = [row for row in rows if row["model"] == model and row["fail_rate"] == rate]
            for policy in dict.fromkeys(row["policy"] for row in cell):
                mine = [row for row in cell if row["policy"] == policy]
                feasible = all(row["feasible"] for row in mine)
                points.append(
                    SweepPoint(
                        model=model,
                        fail_rate=rate,
                        policy=policy,
                        feasible=feasible,
                        samples_per_s=statistics.fmean(row["samples_per_s"] for row in mine)
                        if feasible
                        else 0.0,
                        failures=statistics.fmean(row["failures"] for row in mine),
                    )
                )
    return FailureSweep(
        base=base, models=tuple(models), rates=tuple(rates), seeds=tuple(seeds), points=tuple(points)
    )


def sweep_table(sweep: FailureSweep) -> str:
    """Text table: one row per (model, rate), throughput per policy and its ratio to oobleck.

    Args:
        sweep: A sweep.

    Returns:
        Printable text with a header line.
    """
    header = f"{'model':<12} {'fail/node/h':>11} {'losses':>6}" + "".join(f" {p:>18}" for p in sweep.policies)
    lines = [header, "-" * len(header)]
    for model in sweep.models:
        columns = [
            (sweep.throughput(model, policy), sweep.ratio_to_reference(model, policy))
            for policy in sweep.policies
        ]
        for index, rate in enumerate(sweep.rates):
            losses = next(p.failures for p in sweep.points if p.model == model and p.fail_rate == rate)
            cells = "".join(
                f" {'infeasible':>18}"
                if math.isnan(values[index])
                else f" {values[index]:>9.1f} ({ratios[index]:.2f}x)"
                for values, ratios in columns
            )
            lines.append(f"{model:<12} {rate:>11.3g} {losses:>6.1f}{cells}")
    return "\n".join(lines)


def plot_sweep(sweep: FailureSweep, *, title: str = "") -> Figure:
    """Throughput per policy against failure rate (top) and its ratio to oobleck (bottom), per model.

    Args:
        sweep: A sweep.
        title: Figure title (default: cluster, hardware and duration).

    Returns:
        The figure, one column per model.
    """
    figure, axes = new_figure(4.6 * len(sweep.models), 5.0, rows=2, cols=len(sweep.models))
    columns = len(sweep.models)
    for column, model in enumerate(sweep.models):
        top, bottom = axes[column], axes[columns + column]
        for policy in sweep.policies:
            color = policy_color(policy)
            top.plot(
                sweep.rates, sweep.throughput(model, policy), "o-", color=color, label=policy, markersize=4
            )
            bottom.plot(sweep.rates, sweep.ratio_to_reference(model, policy), "o-", color=color, markersize=4)
        top.set_title(model, fontsize=10)
        top.set_ylim(bottom=0)
        bottom.set_ylim(0, 1.15)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.spines[["top", "right"]].set_visible(False)
        bottom.set_xlabel("failures per node per hour")
        if column == 0:
            top.set_ylabel("samples / s")
            bottom.set_ylabel(f"ratio to {REFERENCE_POLICY}")
            top.legend(fontsize=8)
    base = sweep.base
    figure.suptitle(
        title
        or f"{base.nodes} x {base.hardware}, {base.hours:g} h simulated, mean of seeds {list(sweep.seeds)}",
        fontsize=11,
    )
    return figure
