"""Parameter sweeps: a grid of simulations (nodes x failure rate x model x seed), run in parallel.

Each grid cell is one :func:`~oobleck.sim.simulate` call (every policy of the sweep on that
cell's trace) and yields one row per policy. Cells are independent, so they run on Ray when asked
(``ray_address=None`` starts a local Ray instance, an address joins an existing cluster), else in a
local process pool, else in this process; the rows are the same whichever runs them (a test
holds Ray and the pool equal cell by cell), in grid order.

Assumptions:
    * A row holds only deterministic numbers (no wall times), so results compare exactly.
    * Ray is an optional extra (``pip install .[ray]``); asking for it without it is a one-line
      :class:`~oobleck.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.sim.config import SimulationConfig
from oobleck.sim.seeds import expected_failures
from oobleck.sim.simulation import simulate

ProgressCallback = Callable[[int, int], None]
"""Called with (cells done, cells in all) after each cell."""

ROW_FIELDS: tuple[str, ...] = (
    "model",
    "nodes",
    "fail_rate",
    "seed",
    "policy",
    "feasible",
    "samples",
    "samples_per_s",
    "ettr",
    "recoveries",
    "failures",
    "expected_failures",
)
"""Columns of a sweep's CSV (and keys of each JSON row), in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepGrid:
    """The values each axis takes; the sweep runs their Cartesian product."""

    models: tuple[str, ...]
    nodes: tuple[int, ...]
    fail_rates: tuple[float, ...]
    """Failures per node per hour."""
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("models", "nodes", "fail_rates", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"sweep: --{name.replace('_', '-')} must list at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"sweep: --{name.replace('_', '-')} lists a value twice: {list(values)}")

    def cells(self, base: SimulationConfig) -> list[SimulationConfig]:
        """One validated configuration per cell, in grid order (model, nodes, rate, seed).

        Raises:
            ConfigError: a cell's configuration is invalid (e.g. nodes out of range).
        """
        return [
            dataclasses.replace(base, model=model, nodes=nodes, fail_rate=rate, seed=seed)
            for model, nodes, rate, seed in itertools.product(
                self.models, self.nodes, self.fail_rates, self.seeds
            )
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepResult:
    """Every row of a sweep and what produced it."""

    base: SimulationConfig
    grid: SweepGrid
    rows: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: the shared configuration, the grid and the rows."""
        return {
            "base": self.base.to_dict(),
            "grid": {
                "models": list(self.grid.models),
                "nodes": list(self.grid.nodes),
                "fail_rates": list(self.grid.fail_rates),
                "seeds": list(self.grid.seeds),
            },
            "rows": [dict(row) for row in self.rows],
        }

    def write(self, path: str | Path) -> None:
        """Write the rows as CSV (``.csv``) or the whole document as JSON (any other suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")


def run_cell(config: SimulationConfig) -> list[dict[str, Any]]:
    """Simulate one cell and return one row per policy (a top-level function: picklable for workers)."""
    result = simulate(config)
    expected = expected_failures(config)
    return [
        {
            "model": config.model,
            "nodes": config.nodes,
            "fail_rate": config.fail_rate,
            "seed": config.seed,
            "policy": row.policy,
            "feasible": row.feasible,
            "samples": row.samples,
            "samples_per_s": row.throughput_samples_per_s,
            "ettr": row.ettr,
            "recoveries": sum(row.recoveries.values()),
            "failures": result.trace.num_failures,
            "expected_failures": expected if math.isfinite(expected) else None,
        }
        for row in result.results
    ]


def run_sweep(
    base: SimulationConfig,
    grid: SweepGrid,
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
) -> SweepResult:
    """Run every cell of ``grid`` over ``base`` and collect the rows in grid order.

    Args:
        base: Shared settings (duration, hardware, policies, costs...); each cell replaces its
            model, nodes, failure rate and seed.
        grid: The axes.
        workers: Local processes (pool, or the local Ray instance's CPUs); 1 runs in this process.
        use_ray: Run the cells as Ray tasks.
        ray_address: An existing Ray cluster to join (implies ``use_ray``); ``None`` with
            ``use_ray`` starts a local instance with ``workers`` CPUs.
        progress: Optional callback after each cell.

    Returns:
        The sweep's rows.

    Raises:
        ConfigError: a bad grid or cell, ``workers < 1``, or Ray asked for but not installed.
    """
    if workers < 1:
        raise ConfigError(f"sweep: --workers must be >= 1, got {workers}")
    cells = grid.cells(base)
    if use_ray or ray_address is not None:
        per_cell = _run_on_ray(cells, workers, ray_address, progress)
    elif workers == 1:
        per_cell = []
        for index, cell in enumerate(cells):
            per_cell.append(run_cell(cell))
            if progress is not None:
                progress(index + 1, len(cells))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per_cell = []
            for index, cell_rows in enumerate(pool.map(run_cell, cells)):
                per_cell.append(cell_rows)
                if progress is not None:
                    progress(index + 1, len(cells))
    return SweepResult(base=base, grid=grid, rows=tuple(row for cell_rows in per_cell for row in cell_rows))


def _run_on_ray(
    cells: Sequence[SimulationConfig],
    workers: int,
    address: str | None,
    progress: ProgressCallback | None,
) -> list[list[dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "sweep: --ray needs Ray; install it with pip install 'oobleck[ray]' (or 'ray>=2.9')"
        ) from None
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        refs = [remote.remote(cell) for cell in cells]
        index_of = {ref: index for index, ref in enumerate(refs)}
        results: list[list[dict[str, Any]] | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index_of[ref]] = ray.get(ref)
            if progress is not None:
                progress(len(refs) - len(pending), len(refs))
        return [rows for rows in results if rows is not None]
    finally:
        if started:
            ray.shutdown()
