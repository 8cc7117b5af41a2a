"""Pictures of one simulated run: throughput over time per policy, and where each policy's time went.

Everything is read from a :class:`~oobleck.sim.simulation.SimulationResult`; nothing is simulated
here except in :func:`run_explorer`'s slider callback, which calls ``simulate`` once.

Assumptions:
    * Every policy of a result replayed the same failure trace, so one set of failure marks serves
      all curves.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence

from matplotlib.figure import Figure
from rich.console import Console

from oobleck.errors import OobleckError
from oobleck.sim.config import SimulationConfig
from oobleck.sim.metrics import BREAKDOWN_KEYS, TimelinePoint
from oobleck.sim.report import results_table
from oobleck.sim.simulation import SimulationResult, simulate
from oobleck.viz.style import DPI, cycle_color, format_seconds, message_figure, new_figure, policy_color

_SECONDS_PER_HOUR = 3600.0
_TABLE_WIDTH = 150
_WINDOWS = 48


def summary_text(result: SimulationResult) -> str:
    """The simulator's own results table (as ``python -m oobleck.sim`` prints it), as plain text.

    Args:
        result: A simulation result.

    Returns:
        The table without colour codes, ``_TABLE_WIDTH`` characters wide at most.
    """
    # NOTE: inside a Jupyter kernel rich would display the table as HTML by itself unless told not to.
    console = Console(
        file=io.StringIO(), width=_TABLE_WIDTH, color_system=None, record=True, force_jupyter=False
    )
    console.print(results_table(result))
    return console.export_text()


def plot_throughput_timeline(result: SimulationResult, *, title: str = "") -> Figure:
    """Throughput of every feasible policy over simulated time, with node losses marked.

    The upper panel draws each policy's training throughput averaged over windows of 1/48 of
    the run: the instantaneous rate is zero during every checkpoint write, which would otherwise
    paint the checkpointing policies as solid blocks; the average shows them as a lower plateau and
    a recovery as a dip. The lower panel draws the nodes that are up. Red lines mark the instants
    nodes were lost, green ones where nodes came back.

    Args:
        result: A simulation result.
        title: Figure title; default names model, cluster and failure rate.

    Returns:
        The figure.
    """
    config = result.config
    figure = Figure(figsize=(9, 4.2), dpi=DPI, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    hours = config.hours
    for row in result.results:
        if not row.feasible:
            continue
        edges, rates = windowed_throughput(row.timeline, config.hours * _SECONDS_PER_HOUR, _WINDOWS)
        top.stairs(
            rates,
            [edge / _SECONDS_PER_HOUR for edge in edges],
            label=row.policy,
            color=policy_color(row.policy),
            linewidth=1.3,
            baseline=None,
        )
    nodes_times = [0.0]
    nodes_up = [len(result.trace.initial_nodes)]
    for event in result.trace.events:
        hour = event.time_s / _SECONDS_PER_HOUR
        for ax in (top, bottom):
            if event.lost:
                ax.axvline(hour, color="red", alpha=0.3, linewidth=0.8)
            if event.joined:
                ax.axvline(hour, color="green", alpha=0.3, linewidth=0.8)
        nodes_times.append(hour)
        nodes_up.append(nodes_up[-1] - len(event.lost) + len(event.joined))
    bottom.stairs(nodes_up, [*nodes_times, hours], color=cycle_color(7), baseline=None)
    top.set_ylabel(f"samples / s ({format_seconds(config.hours * _SECONDS_PER_HOUR / _WINDOWS)} mean)")
    top.set_ylim(bottom=0)
    top.legend(loc="lower left", fontsize=8)
    top.set_title(title or _default_title(result))
    bottom.set_ylabel("nodes up")
    bottom.set_xlabel("simulated time (h); red: node lost, green: node back")
    bottom.set_xlim(0, hours)
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    return figure


def windowed_throughput(
    timeline: Sequence[TimelinePoint], duration_s: float, windows: int
) -> tuple[list[float], list[float]]:
    """Mean throughput of a step-function timeline over ``windows`` equal windows.

    Args:
        timeline: Points of constant throughput from their ``time_s`` to the next point's.
        duration_s: End of the last point's interval (the simulated duration).
        windows: Number of windows.

    Returns:
        ``windows + 1`` window edges (seconds) and the ``windows`` mean rates (samples/s).
    """
    width = duration_s / windows
    edges = [index * width for index in range(windows + 1)]
    samples = [0.0] * windows
    ends = [point.time_s for point in timeline[1:]] + [duration_s]
    for point, end in zip(timeline, ends, strict=True):
        first = min(int(point.time_s // width), windows - 1)
        last = min(int(end // width), windows - 1)
        for index in range(first, last + 1):
            overlap = min(end, edges[index + 1]) - max(point.time_s, edges[index])
            samples[index] += max(0.0, overlap) * point.samples_per_s
    return edges, [total / width for total in samples]


def plot_breakdown(result: SimulationResult, *, title: str = "") -> Figure:
    """Where each policy's simulated time went: one stacked horizontal bar per policy, in percent.

    Categories are the simulator's (useful training, recovery, lost or redone work, checkpointing,
    redundant computation, down); infeasible policies are listed with their bar left empty.

    Args:
        result: A simulation result.
        title: Figure title (default: a description of the bars).

    Returns:
        The figure.
    """
    rows = result.results
    figure, (ax,) = new_figure(9, 1.2 + 0.45 * len(rows))
    left = [0.0] * len(rows)
    for index, key in enumerate(BREAKDOWN_KEYS):
        shares = [100 * row.breakdown_s[key] / row.duration_s if row.feasible else 0.0 for row in rows]
        ax.barh(range(len(rows)), shares, left=left, color=cycle_color(index), label=key, height=0.6)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    labels = [row.policy if row.feasible else f"{row.policy} (infeasible)" for row in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of simulated time")
    ax.legend(
        ncols=len(BREAKDOWN_KEYS), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False
    )
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, pad=24)
    return figure


def run_explorer(base: SimulationConfig) -> Callable[[int, float, str], Figure]:
    """The callback behind the notebook's simulation sliders: ``interact(run_explorer(config), ...)``.

    The returned function simulates ``base`` with another cluster size, failure rate and policy
    (``"all"`` runs every policy of ``base``) and draws the timeline; each of its parameters
    (``nodes``, ``fail_rate``, ``policy``) is one widget. A configuration the simulator rejects is
    drawn as a figure holding its one-line reason.

    Args:
        base: The configuration to vary (model, hardware, duration, seed, costs, ...).

    Returns:
        ``explore_run(nodes, fail_rate, policy) -> Figure``.
    """

    def explore_run(nodes: int, fail_rate: float, policy: str) -> Figure:
        policies = base.policies if policy == "all" else (policy,)
        try:
            config = dataclasses.replace(base, nodes=nodes, fail_rate=fail_rate, policies=policies)
            return plot_throughput_timeline(simulate(config))
        except OobleckError as error:
            return message_figure(f"not simulated: {error}")

    return explore_run


def _default_title(result: SimulationResult) -> str:
    config = result.config
    return (
        f"{config.model} on {config.nodes} x {config.hardware}, {config.fail_rate:g} failures/node/h, "
        f"{result.trace.num_failures} losses, seed {config.seed}"
    )
