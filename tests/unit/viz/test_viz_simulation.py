"""Tests of the single-run figures: timelines follow the simulator's results and trace exactly."""

from __future__ import annotations

import dataclasses

import pytest

from oobleck.sim import SimulationConfig, SimulationResult, simulate
from oobleck.sim.metrics import BREAKDOWN_KEYS, TimelinePoint
from oobleck.viz.simulation import (
    plot_breakdown,
    plot_throughput_timeline,
    run_explorer,
    summary_text,
    windowed_throughput,
)

CONFIG = SimulationConfig(
    model="gpt3-2.7b", hardware="a100-40", nodes=8, hours=4, fail_rate=0.1, repair_hours=1.0, seed=3
)


@pytest.fixture(scope="module")
def result() -> SimulationResult:
    return simulate(CONFIG)


def test_summary_is_the_simulators_table_as_plain_text(result: SimulationResult) -> None:
    """Every policy has a row, and no terminal colour codes leak into the notebook."""
    text = summary_text(result)
    assert all(policy in text for policy in CONFIG.policies)
    assert "\x1b[" not in text


def test_timeline_has_one_curve_per_feasible_policy_and_marks_every_event(result: SimulationResult) -> None:
    """Curves equal the simulator's timelines; one line per loss and per return on both panels."""
    top, bottom = plot_throughput_timeline(result).axes
    feasible = [row for row in result.results if row.feasible]
    curves = [patch for patch in top.patches if patch.get_label() in CONFIG.policies]
    assert [c.get_label() for c in curves] == [row.policy for row in feasible]
    marks = sum(bool(event.lost) + bool(event.joined) for event in result.trace.events)
    assert result.trace.num_failures > 0
    assert len(top.get_lines()) == len(bottom.get_lines()) == marks


def test_breakdown_bars_partition_each_policys_time(result: SimulationResult) -> None:
    """Each policy's stacked segments add up to 100 % of the simulated time."""
    (ax,) = plot_breakdown(result).axes
    totals: dict[int, float] = {}
    for patch in ax.patches:
        row = round(patch.get_y() + patch.get_height() / 2)
        totals[row] = totals.get(row, 0.0) + patch.get_width()
    assert len(ax.patches) == len(BREAKDOWN_KEYS) * len(result.results)
    assert all(total == pytest.approx(100.0) for total in totals.values())


def test_run_explorer_runs_one_policy_and_draws_rejections() -> None:
    """The slider callback simulates the chosen policy only, and turns a bad setting into a message."""
    explore = run_explorer(dataclasses.replace(CONFIG, hours=1))
    top, _ = explore(nodes=8, fail_rate=0.05, policy="varuna").axes
    assert [p.get_label() for p in top.patches if p.get_label() in CONFIG.policies] == ["varuna"]
    (ax,) = explore(nodes=0, fail_rate=0.05, policy="all").axes
    assert ax.texts[0].get_text().startswith("not simulated: --nodes must be a positive integer")


def test_windowed_throughput_preserves_the_samples_trained() -> None:
    """Window means integrate to the same samples as the step function, split at window edges."""
    points = [
        TimelinePoint(time_s=t, nodes_up=4, nodes_used=4, samples_per_s=r, min_pipeline_nodes=1, samples=0.0)
        for t, r in ((0.0, 10.0), (15.0, 0.0), (25.0, 20.0))
    ]
    edges, rates = windowed_throughput(points, 40.0, 4)
    assert edges == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert rates == [10.0, 5.0, 10.0, 20.0]
