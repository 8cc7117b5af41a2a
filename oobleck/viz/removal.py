"""The Oobleck paper's synthetic-trace experiment: one node removed every period until half remain.

30 nodes; one node is removed every 6 h, 1 h, 30 min or 10 min until 15 remain; GPT-3 2.7B and
6.7B. Each (model, period) runs every policy on the same traces (:func:`oobleck.sim.seeds.
simulate_seeds`), for 16 periods: the 15 removals and one period on the 15 nodes left.

Constants (and why), all from the simulator's defaults unless stated:
    * ``a100-40`` nodes (8 GPUs each): the catalogue's default node; the paper's exact hardware
      is not in our catalogue, so absolute throughputs are ours, not the paper's.
    * ``f = 1``, ``B = 512`` microbatches of one 2048-token sample (about GPT-3's 1M-token batch).
    * Seeds vary only *which* node goes (the paper fixes no order); times are the period's.
    * The checkpoint period is planned for the removal period (the configured MTBF), the way an
      operator who knows the preemption rate would set it.
    * Recovery and checkpoint constants are the defaults of :class:`oobleck.sim.SimCosts`
      (120 s restart, 1 GB/s per node checkpoint writes, 2 GB/s reads); none is tuned to a result.

Assumptions:
    * Removed nodes never return (the paper's trace only removes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from oobleck.sim.config import SimulationConfig
from oobleck.sim.seeds import SeedsResult, simulate_seeds
from oobleck.viz.style import new_figure, policy_color

PAPER_PERIODS_MINUTES: tuple[float, ...] = (360.0, 60.0, 30.0, 10.0)
"""The paper's removal periods: 6 h, 1 h, 30 min, 10 min."""
PAPER_MODELS: tuple[str, ...] = ("gpt3-2.7b", "gpt3-6.7b")
PAPER_NODES = 30
PAPER_UNTIL_NODES = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class RemovalExperiment:
    """Every (model, period) of the experiment with its multi-seed result."""

    models: tuple[str, ...]
    periods_minutes: tuple[float, ...]
    results: dict[tuple[str, float], SeedsResult]

    def command(self, model: str, period_minutes: float) -> str:
        """The ``python -m oobleck.sim`` line that reproduces one cell."""
        config = self.results[model, period_minutes].config
        return (
            f"python -m oobleck.sim --nodes {config.nodes} --remove-every-minutes {period_minutes:g} "
            f"--hours {config.hours:g} --model {model} "
            f"--seeds {len(self.results[model, period_minutes].runs)}"
        )


def run_removal_experiment(
    base: SimulationConfig | None = None,
    *,
    models: Sequence[str] = PAPER_MODELS,
    periods_minutes: Sequence[float] = PAPER_PERIODS_MINUTES,
    seeds: Sequence[int] = (0, 1, 2),
) -> RemovalExperiment:
    """Simulate every model at every removal period, all policies on the same seeded traces.

    Args:
        base: Shared settings (default: 30 nodes of the simulator's defaults, stopping at 15).
        models: Catalogue models.
        periods_minutes: Minutes between removals.
        seeds: Node-order seeds.

    Returns:
        The experiment.

    Raises:
        ConfigError: a bad model or period.
    """
    base = base or SimulationConfig(nodes=PAPER_NODES, remove_until_nodes=PAPER_UNTIL_NODES)
    periods = base.nodes - base.remove_until_nodes + 1
    results = {}
    for model in models:
        for period in periods_minutes:
            config = dataclasses.replace(
                base, model=model, remove_every_minutes=period, hours=periods * period / 60.0
            )
            results[model, period] = simulate_seeds(config, seeds)
    return RemovalExperiment(models=tuple(models), periods_minutes=tuple(periods_minutes), results=results)


def removal_table(experiment: RemovalExperiment) -> str:
    """Text table: per model and period, each policy's throughput (mean over seeds) and ratio to oobleck."""
    first = next(iter(experiment.results.values()))
    policies = [summary.policy for summary in first.summaries]
    header = f"{'model':<10} {'period':>7}" + "".join(f" {p:>20}" for p in policies)
    lines = [header, "-" * len(header)]
    for model in experiment.models:
        for period in experiment.periods_minutes:
            cells = []
            for summary in experiment.results[model, period].summaries:
                if not summary.feasible:
                    cells.append(f" {'infeasible':>20}")
                    continue
                rate, ratio = summary.samples_per_s.mean, summary.ratio.mean
                cells.append(f" {rate:>9.1f} ({ratio:.2f}x)".rjust(21))
            lines.append(f"{model:<10} {_period(period):>7}" + "".join(cells))
    return "\n".join(lines)


def plot_removal(experiment: RemovalExperiment) -> Figure:
    """Throughput ratio to oobleck against the removal period, one panel per model."""
    figure, axes = new_figure(4.6 * len(experiment.models), 3.6, rows=1, cols=len(experiment.models))
    labels = [_period(period) for period in experiment.periods_minutes]
    for ax, model in zip(axes, experiment.models, strict=True):
        first = experiment.results[model, experiment.periods_minutes[0]]
        for index, summary in enumerate(first.summaries):
            ratios = [
                experiment.results[model, period].summaries[index].ratio.mean
                for period in experiment.periods_minutes
            ]
            ratios = [value if math.isfinite(value) else math.nan for value in ratios]
            ax.plot(labels, ratios, "o-", color=policy_color(summary.policy), label=summary.policy)
        ax.set_title(model, fontsize=10)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("one node removed every")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("throughput / oobleck's")
    axes[0].legend(fontsize=8)
    figure.suptitle("30 nodes, one removed per period until 15 remain (mean over seeds)", fontsize=11)
    return figure


def _period(minutes: float) -> str:
    return f"{minutes / 60:g} h" if minutes >= 60 else f"{minutes:g} min"
