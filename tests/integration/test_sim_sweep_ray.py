"""Sweeps on Ray: a local Ray instance with 2 workers returns the process pool's rows, cell by cell."""

from __future__ import annotations

import pytest

from oobleck.sim import SimulationConfig
from oobleck.sim.sweep import SweepGrid, run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ray = pytest.importorskip(
    "ray", reason="ray is an optional extra (pip install '.[ray]'); the Ray sweep is untested here"
)


@pytest.mark.timeout(180)
def test_ray_sweep_equals_the_process_pool_cell_by_cell() -> None:
    """Every row of a 2-worker local Ray sweep equals the row of a 2-process pool sweep."""
    base = SimulationConfig(hours=2.0, hardware="cpu", global_microbatches=16, policies=("oobleck", "varuna"))
    grid = SweepGrid(models=("gpt2",), nodes=(4, 6), fail_rates=(0.0, 0.2), seeds=(0, 1))
    done: list[int] = []
    on_ray = run_sweep(base, grid, workers=2, use_ray=True, progress=lambda count, _total: done.append(count))
    in_pool = run_sweep(base, grid, workers=2)
    assert len(on_ray.rows) == len(in_pool.rows) == 16
    for ray_row, pool_row in zip(on_ray.rows, in_pool.rows, strict=True):
        assert ray_row == pool_row
    assert done[-1] == 8
    assert not ray.is_initialized()
