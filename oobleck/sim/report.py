"""Human and machine output of a simulation: a rich table, the ``--json`` file and the ``--plot``.

Assumptions:
    * The first feasible ``oobleck`` result is the reference of the "vs oobleck" column; without
      one, the column is left empty.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from oobleck.errors import ConfigError
from oobleck.sim.metrics import BREAKDOWN_KEYS, PolicyResult
from oobleck.sim.seeds import Estimate, SeedsResult, expected_failures
from oobleck.sim.simulation import SimulationResult

_REFERENCE = "oobleck"
_PLOT_BINS = 200
"""Time bins of the throughput plot: fine enough to show each outage, coarse enough that the
checkpoint pauses of a long run average out instead of filling the plot."""
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
        caption="\n".join(
            [f"{result.trace.num_failures} node failure(s) in the shared trace{_expectation(result)}"]
            + [f"{row.policy} is infeasible: {row.reason}" for row in result.results if not row.feasible]
        ),
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
            table.add_row(row.policy, *[""] * len(BREAKDOWN_KEYS), "infeasible")
            continue
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(row.recoveries.items())) or "none"
        shares = [f"{100 * row.breakdown_s[key] / row.duration_s:.1f}" for key in BREAKDOWN_KEYS]
        table.add_row(row.policy, *shares, kinds)
    return table


def seeds_table(result: SeedsResult) -> Table:
    """One row per policy over K seeds: mean and 95% interval of throughput, ratio and ETTR."""
    config = result.config
    source = f"trace {config.trace}" if config.trace else f"{config.fail_rate:g} failures/node/h"
    seeds = result.seeds
    expected = expected_failures(config)
    drawn = ", ".join(str(count) for count in result.failures)
    title = (
        f"{config.model} on {config.nodes} x {config.hardware}, {config.hours:g} h, {source}, "
        f"f={config.fault_tolerance}, n0={result.runs[0].min_nodes}, seeds {seeds[0]}..{seeds[-1]}"
    )
    table = Table(
        title=title,
        min_width=len(title),
        caption="\n".join(
            [
                f"mean ± 95% interval over {len(seeds)} seeds, every policy on the same {len(seeds)} traces",
                f"node failures per trace: {drawn}"
                + (f" (expected {expected:.1f})" if math.isfinite(expected) else ""),
            ]
            + [f"{row.policy} is infeasible: {row.reason}" for row in result.summaries if not row.feasible]
        ),
    )
    for column in ("policy", "samples/s", "vs oobleck", "ETTR", "recov"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in result.summaries:
        if not row.feasible:
            table.add_row(row.policy, "infeasible", "", "", "")
            continue
        table.add_row(
            row.policy,
            _estimate(row.samples_per_s, "{:.0f}"),
            _estimate(row.ratio, "{:.3f}", suffix="x"),
            _estimate(row.ettr, "{:.3f}"),
            f"{row.recoveries.mean:.1f}",
        )
    return table


class _Document(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def check_output_path(path: str | Path, flag: str, *, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output path that cannot be written, before any simulation runs.

    Args:
        path: The file the command will write (parent folders may be created).
        flag: The flag that named it, for the message.
        suffixes: Allowed file name endings (empty: any).

    Raises:
        ConfigError: the path is a directory, has a wrong suffix, or its nearest existing folder
            is not a writable directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name such as {path / 'out'}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: must end with {' or '.join(suffixes)}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: not writable; choose another path")


def write_json(result: _Document, path: str | Path) -> None:
    """Write ``result.to_dict()`` as JSON (NaN-free: missing values are ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")


def plot(result: SimulationResult, path: str | Path) -> None:
    """Save :func:`make_figure` as a PNG at ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_figure(result).savefig(path, dpi=110)


def make_figure(result: SimulationResult) -> Figure:
    """Throughput and samples trained over time per policy (failures marked), and the breakdown.

    Uses :class:`matplotlib.figure.Figure` directly, so no GUI backend or global pyplot state is
    touched (safe in tests; a notebook displays the returned figure).
    """
    figure = Figure(figsize=(12, 6.5), layout="constrained")
    axes = figure.subplot_mosaic([["rate", "bars"], ["samples", "bars"]], width_ratios=[2.2, 1])
    hours = result.config.hours
    feasible = [row for row in result.results if row.feasible]
    edges_h = np.linspace(0.0, hours, _PLOT_BINS + 1)
    for row in feasible:
        axes["rate"].stairs(
            _binned_rate(row, edges_h * 3600.0), edges_h, baseline=None, label=row.policy, linewidth=1.2
        )
        times_s, samples = _samples_curve(row)
        axes["samples"].plot(times_s / 3600.0, samples, label=row.policy, linewidth=1.2)
    for name in ("rate", "samples"):
        for event in result.trace.events:
            if event.lost:
                axes[name].axvline(event.time_s / 3600, color="red", alpha=0.25, linewidth=0.8)
        axes[name].set_xlim(0, hours)
        axes[name].set_ylim(bottom=0)
    axes["rate"].set_ylabel(f"samples/s (mean over {hours * 60 / _PLOT_BINS:.3g} min)")
    axes["rate"].legend(loc="lower left", fontsize="small", framealpha=0.9)
    axes["samples"].set_ylabel("samples trained (drops: lost work)")
    axes["samples"].set_xlabel("time (h); red lines: node failures")
    bottom = [0.0] * len(feasible)
    names = [row.policy for row in feasible]
    for key in BREAKDOWN_KEYS:
        shares = [row.breakdown_s[key] / row.duration_s for row in feasible]
        axes["bars"].bar(names, shares, bottom=bottom, label=key)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    axes["bars"].set_ylabel("share of simulated time")
    axes["bars"].set_ylim(0, 1)
    axes["bars"].legend(loc="lower right", fontsize="small")
    return figure


def _samples_curve(row: PolicyResult) -> tuple[np.ndarray, np.ndarray]:
    """Exact cumulative samples: linear growth between points, then the value recorded at each point."""
    times: list[float] = []
    samples: list[float] = []
    points = row.timeline
    for point, after in zip(points, [*points[1:], None], strict=True):
        end_s = after.time_s if after is not None else row.duration_s
        times += [point.time_s, end_s]
        samples += [point.samples, point.samples + point.samples_per_s * (end_s - point.time_s)]
    return np.array(times), np.array(samples)


def _binned_rate(row: PolicyResult, edges_s: np.ndarray) -> np.ndarray:
    """Mean instantaneous throughput per time bin: the timeline is a step function, so its integral
    is piecewise linear and ``np.interp`` of the cumulative samples at the bin edges is exact."""
    times = np.array([point.time_s for point in row.timeline] + [row.duration_s])
    rates = np.array([point.samples_per_s for point in row.timeline])
    cumulative = np.concatenate([[0.0], np.cumsum(rates * np.diff(times))])
    return np.diff(np.interp(edges_s, times, cumulative)) / np.diff(edges_s)


def _expectation(result: SimulationResult) -> str:
    expected = expected_failures(result.config)
    return f" (expected {expected:.1f})" if math.isfinite(expected) else ""


def _estimate(value: Estimate, spec: str, *, suffix: str = "") -> str:
    if not math.isfinite(value.mean):
        return "-"
    text = spec.format(value.mean) + suffix
    return text if not math.isfinite(value.half_width) else f"{text} ± {spec.format(value.half_width)}"


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
