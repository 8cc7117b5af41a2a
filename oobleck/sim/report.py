"""Human and machine output of a simulation: a rich table, the ``--json`` file and the ``--plot``.

Assumptions:
    * The first feasible ``oobleck`` result is the reference of the "vs oobleck" column; without
      one, the column is left empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure
from rich.table import Table

from oobleck.sim.metrics import BREAKDOWN_KEYS, PolicyResult
from oobleck.sim.simulation import SimulationResult

_REFERENCE = "oobleck"
_BREAKDOWN_LABELS = {
    "useful": "useful",
    "recovery": "recov",
    "lost": "lost",
    "checkpoint": "ckpt",
    "redundancy": "redund",
    "down": "down",
}


def results_table(result: SimulationResult) -> Table:
    """One row per policy: work done, ratio to oobleck, ETTR, recoveries and their durations."""
    config = result.config
    source = f"trace {config.trace}" if config.trace else f"{config.fail_rate:g} failures/node/h"
    table = Table(
        title=(
            f"{config.model} on {config.nodes} x {config.hardware}, {config.hours:g} h, {source}, "
            f"f={config.fault_tolerance}, n0={result.min_nodes}, seed {config.seed}"
        ),
        caption=f"{result.trace.num_failures} node failures in the shared trace",
    )
    for column in ("policy", "samples", "samples/s", "vs oobleck", "ETTR", "recov", "p50 s", "p99 s"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    reference = _reference(result.results)
    for row in result.results:
        if not row.feasible:
            table.add_row(row.policy, "infeasible", *[""] * 6)
            continue
        table.add_row(
            row.policy,
            _count(row.samples),
            _count(row.throughput_samples_per_s),
            "" if reference is None else _ratio(row.samples, reference.samples),
            f"{row.ettr:.3f}",
            str(sum(row.recoveries.values())),
            _seconds(row.recovery_p50_s),
            _seconds(row.recovery_p99_s),
        )
    return table


def breakdown_table(result: SimulationResult) -> Table:
    """One row per policy: where the simulated time went (%), and the recoveries by kind."""
    table = Table(title="time breakdown (% of simulated time)")
    table.add_column("policy")
    for key in BREAKDOWN_KEYS:
        table.add_column(_BREAKDOWN_LABELS[key], justify="right")
    table.add_column("recoveries by kind")
    for row in result.results:
        if not row.feasible:
            table.add_row(row.policy, *[""] * len(BREAKDOWN_KEYS), f"infeasible: {row.reason}")
            continue
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(row.recoveries.items())) or "none"
        shares = [f"{100 * row.breakdown_s[key] / row.duration_s:.1f}" for key in BREAKDOWN_KEYS]
        table.add_row(row.policy, *shares, kinds)
    return table


def write_json(result: SimulationResult, path: str | Path) -> None:
    """Write :meth:`SimulationResult.to_dict` as JSON (NaN-free: missing values are ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")


def plot(result: SimulationResult, path: str | Path) -> None:
    """Save a PNG: throughput over time per policy with failures marked, and the time breakdown.

    Uses :class:`matplotlib.figure.Figure` directly, so no GUI backend or global pyplot state is
    touched (safe in tests and notebooks).
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    timeline_axes, breakdown_axes = figure.subplots(1, 2, width_ratios=[2.2, 1])
    hours = result.config.hours
    feasible = [row for row in result.results if row.feasible]
    for row in feasible:
        times = [point.time_s / 3600 for point in row.timeline] + [hours]
        rates = [point.samples_per_s for point in row.timeline]
        timeline_axes.stairs(rates, times, label=row.policy, linewidth=1.2)
    for event in result.trace.events:
        if event.lost:
            timeline_axes.axvline(event.time_s / 3600, color="red", alpha=0.25, linewidth=0.8)
    timeline_axes.set_xlabel("time (h); red lines: node failures")
    timeline_axes.set_ylabel("throughput (samples/s)")
    timeline_axes.set_xlim(0, hours)
    timeline_axes.legend(loc="lower left", fontsize="small")
    bottom = [0.0] * len(feasible)
    names = [row.policy for row in feasible]
    for key in BREAKDOWN_KEYS:
        shares = [row.breakdown_s[key] / row.duration_s for row in feasible]
        breakdown_axes.bar(names, shares, bottom=bottom, label=key)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    breakdown_axes.set_ylabel("share of simulated time")
    breakdown_axes.set_ylim(0, 1)
    breakdown_axes.legend(loc="lower right", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _reference(results: tuple[PolicyResult, ...]) -> PolicyResult | None:
    for row in results:
        if row.policy == _REFERENCE and row.feasible:
            return row
    return None


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}x" if reference > 0 else "-"


def _count(value: float) -> str:
    """Three significant digits with a k/M/G suffix, so wide runs still fit 80 columns."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
