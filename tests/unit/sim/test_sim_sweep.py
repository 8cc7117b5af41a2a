"""Sweeps: a grid of simulations, the same rows in this process or a process pool, in one file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from oobleck.cli.sim import main
from oobleck.errors import ConfigError
from oobleck.sim import SimulationConfig
from oobleck.sim.sweep import ROW_FIELDS, SweepGrid, run_sweep

BASE = SimulationConfig(
    hours=2.0, hardware="cpu", global_microbatches=16, policies=("oobleck", "varuna", "checkpoint")
)
GRID = SweepGrid(models=("gpt2",), nodes=(4, 6), fail_rates=(0.0, 0.2), seeds=(0, 1))


def test_rows_follow_the_grid_one_per_cell_and_policy() -> None:
    """Rows come in grid order (model, nodes, rate, seed), one per policy, failures next to expectation."""
    rows = run_sweep(BASE, GRID).rows
    assert len(rows) == 2 * 2 * 2 * 3
    keys = [(row["nodes"], row["fail_rate"], row["seed"], row["policy"]) for row in rows]
    assert keys[:4] == [
        (4, 0.0, 0, "oobleck"),
        (4, 0.0, 0, "varuna"),
        (4, 0.0, 0, "checkpoint"),
        (4, 0.0, 1, "oobleck"),
    ]
    assert all(set(row) == set(ROW_FIELDS) for row in rows)
    assert all(
        row["failures"] == 0 and row["expected_failures"] == 0.0 for row in rows if row["fail_rate"] == 0
    )


def test_a_process_pool_gives_the_same_rows_as_one_process() -> None:
    """Two worker processes return exactly the rows of the in-process run, cell by cell."""
    grid = SweepGrid(models=("gpt2",), nodes=(4,), fail_rates=(0.2,), seeds=(0, 1))
    assert run_sweep(BASE, grid, workers=2).rows == run_sweep(BASE, grid).rows


def test_a_grid_axis_without_values_or_with_a_repeat_is_refused() -> None:
    """An empty or repeated axis is a one-line ConfigError naming the flag."""
    with pytest.raises(ConfigError, match="--nodes must list at least one value"):
        SweepGrid(models=("gpt2",), nodes=(), fail_rates=(0.1,), seeds=(0,))
    with pytest.raises(ConfigError, match="--seeds lists a value twice"):
        SweepGrid(models=("gpt2",), nodes=(4,), fail_rates=(0.1,), seeds=(0, 0))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_sweep_command_writes_one_file(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sim sweep`` writes every row to one CSV or JSON file."""
    out = tmp_path / f"sweep{suffix}"
    argv = ["sweep", "--models", "gpt2", "--nodes", "4", "--fail-rates", "0.1,0.2", "--seeds", "2"]
    argv += ["--hardware", "cpu", "--hours", "1", "--global-batch", "16", "--policy", "oobleck,varuna"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == list(ROW_FIELDS)
    else:
        document = json.loads(out.read_text())
        rows = document["rows"]
        assert document["grid"]["seeds"] == [0, 1]
    assert len(rows) == 2 * 2 * 2
    assert "wrote 8 rows (4 cells)" in capsys.readouterr().out


def test_sweep_refuses_an_unwritable_out_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory as --out exits 2 with one line, before any cell runs."""
    assert main(["sweep", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a directory" in err and err.count("\n") == 1
