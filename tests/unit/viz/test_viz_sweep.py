"""Tests of failure-rate sweeps: the rate grid, averaging over seeds, ratios and the figure."""

from __future__ import annotations

import dataclasses
import math

import pytest

from oobleck.errors import ConfigError
from oobleck.sim import SimulationConfig, simulate
from oobleck.viz.sweep import HARDWARE_LIKE_RATE, plot_sweep, sweep_failure_rates, sweep_rates, sweep_table

BASE = SimulationConfig(
    model="gpt3-2.7b",
    hardware="a100-40",
    nodes=8,
    hours=2,
    repair_hours=1.0,
    policies=("oobleck", "checkpoint"),
)


def test_rates_run_from_hardware_like_to_one_loss_every_ten_minutes() -> None:
    """The grid is geometric, starts at 2.7e-4/node/h and ends at 6 losses per hour over the cluster."""
    rates = sweep_rates(16, count=4)
    assert rates[0] == HARDWARE_LIKE_RATE
    assert rates[-1] == pytest.approx(6 / 16)
    assert rates[1] / rates[0] == pytest.approx(rates[2] / rates[1])
    with pytest.raises(ConfigError, match="count >= 2"):
        sweep_rates(16, count=1)


def test_sweep_averages_policies_over_seeds_and_divides_by_oobleck() -> None:
    """Each point is the seed mean of the simulator's throughput; oobleck's own ratio is 1."""
    rates = (0.05, 0.5)
    swept = sweep_failure_rates(BASE, models=["gpt3-2.7b"], rates=rates, seeds=(0, 1))
    for rate, value in zip(rates, swept.throughput("gpt3-2.7b", "checkpoint"), strict=True):
        runs = [simulate(dataclasses.replace(BASE, fail_rate=rate, seed=seed)) for seed in (0, 1)]
        assert value == pytest.approx(sum(r.result("checkpoint").throughput_samples_per_s for r in runs) / 2)
    assert swept.ratio_to_reference("gpt3-2.7b", "oobleck") == (1.0, 1.0)
    assert len(sweep_table(swept).splitlines()) == 2 + len(rates)
    figure = plot_sweep(swept)
    assert len(figure.axes) == 2
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["oobleck", "checkpoint"]


def test_infeasible_policies_are_nan_in_the_curves_and_named_in_the_table() -> None:
    """A policy that cannot run the model (bamboo on 8 CPU nodes) has no throughput, rather than zero."""
    config = dataclasses.replace(BASE, hardware="cpu", policies=("oobleck", "bamboo"))
    swept = sweep_failure_rates(config, models=["gpt3-medium"], rates=(0.01,))
    assert [p.feasible for p in swept.points] == [True, False]
    assert math.isnan(swept.throughput("gpt3-medium", "bamboo")[0])
    assert math.isnan(swept.ratio_to_reference("gpt3-medium", "bamboo")[0])
    assert "infeasible" in sweep_table(swept)


def test_a_sweep_needs_a_seed() -> None:
    """An empty seed list is refused instead of producing empty means."""
    with pytest.raises(ConfigError, match="at least one seed"):
        sweep_failure_rates(BASE, models=["gpt3-2.7b"], rates=(0.1,), seeds=())
