"""The committed notebooks run headless, are thin and small, and hold outputs of the current code.

How staleness is checked: each headless notebook is re-executed here (nbclient, a fresh kernel of
this interpreter) and its outputs are compared with the committed ones, reduced by
``oobleck.viz.execute.comparable_outputs`` to what the code decides: stream text, the text form of
results, MIME types and therefore the number of figures; not PNG bytes (they change with
matplotlib and font versions) and not widget ids (random per run). We chose re-execution over
regenerating in CI and diffing files because it needs no write access to the checkout, it tests
that the notebooks run top to bottom at the same time, and a failure names the first differing
cell instead of a base64 diff. Notebook 03 measures real processes, so its numbers differ on every
run: its test re-executes it and compares only the shape of the outputs (which cells print, which draw
figures). That checks that it runs top to bottom, not its statistics, so the test records each of its
three scenarios once (``OOBLECK_NB03_EVALUATIONS=1`` and ``OOBLECK_NB03_CALIBRATIONS=1``, which the
notebook reads; default 3 each): three fresh runs, not nine.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest

from oobleck.viz.execute import (
    README_TAG,
    comparable_outputs,
    execute_notebook,
    is_measured,
    output_shape,
    readme_figure,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
HEADLESS = ("01_pipeline_templates.ipynb", "02_failure_simulation.ipynb")
"""Notebooks whose outputs are a pure function of the code."""
MEASURED = "03_predicted_vs_measured.ipynb"
"""Records real multi-process runs: outputs vary with the machine, only their shape is stable."""
ALL = (*HEADLESS, MEASURED)
EVALUATIONS_ENV = "OOBLECK_NB03_EVALUATIONS"
"""Read by notebook 03's parameter cell: how many evaluation runs it records (default 3)."""
CALIBRATIONS_ENV = "OOBLECK_NB03_CALIBRATIONS"
"""Read by notebook 03's parameter cell: how many times it records each calibration loss (default 3)."""
MAX_CELL_LINES = 12
"""Notebooks only import and call: a code cell longer than this holds logic that belongs in oobleck.viz."""


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", HEADLESS)
def test_committed_outputs_match_a_fresh_headless_run(name: str) -> None:
    """Re-executing the notebook top to bottom reproduces every committed output that the code decides."""
    committed = _read(name)
    executed = execute_notebook(NOTEBOOKS / name, timeout_s=300)
    fresh, saved = comparable_outputs(executed), comparable_outputs(committed)
    assert len(fresh) == len(saved)
    for index, (now, then) in enumerate(zip(fresh, saved, strict=True)):
        assert now == then, (
            f"{name} code cell {index} is stale: run python notebooks/regenerate.py {name[:2]}"
        )
    assert not any(output[0] == "error" for cell in fresh for output in cell)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_measured_notebook_runs_top_to_bottom_with_the_committed_output_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Notebook 03 records its deep-plan runs with a killed node and its outputs have the committed shape
    (each scenario once, not three times: this checks that it runs, not its statistics)."""
    monkeypatch.setenv(EVALUATIONS_ENV, "1")
    monkeypatch.setenv(CALIBRATIONS_ENV, "1")
    runs = NOTEBOOKS / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    try:
        executed = execute_notebook(NOTEBOOKS / MEASURED, timeout_s=480)
    finally:
        for folder in (set(runs.iterdir()) if runs.is_dir() else set()) - before:
            shutil.rmtree(folder)
    committed = _read(MEASURED)
    assert is_measured(committed)
    fresh, saved = output_shape(comparable_outputs(executed)), output_shape(comparable_outputs(committed))
    assert fresh == saved
    assert not any(output[0] == "error" for cell in fresh for output in cell)


@pytest.mark.parametrize("name", ALL)
def test_notebooks_are_committed_with_figures_in_the_cell_outputs(name: str) -> None:
    """Every code cell was executed, and figures appear as PNG outputs, not only inside widget state."""
    notebook = _read(name)
    cells = _code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells)
    pngs = [o for cell in cells for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2
    assert readme_figure(notebook) is not None


@pytest.mark.parametrize("name", ALL)
def test_cells_are_thin_and_valid_python(name: str) -> None:
    """Code cells are short calls into the package and parse as Python once magics are removed."""
    for cell in _code_cells(_read(name)):
        lines = cell.source.splitlines()
        assert len(lines) <= MAX_CELL_LINES, (
            f"{name}: a {len(lines)}-line cell: move its logic to oobleck.viz"
        )
        ast.parse("\n".join(line for line in lines if not line.startswith("%")))


@pytest.mark.parametrize("name", ALL)
def test_each_notebook_tags_one_readme_figure_and_the_image_is_small(name: str) -> None:
    """One cell per notebook is tagged for the README, and the committed image stays under 150 KB."""
    tagged = [cell for cell in _read(name).cells if README_TAG in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    image = ROOT / "docs" / "images" / f"{Path(name).stem}.png"
    assert image.is_file()
    assert image.stat().st_size <= 150 * 1024


def test_measured_notebook_reads_its_repeat_counts_from_the_environment() -> None:
    """Notebook 03 records as many evaluation and calibration runs as the environment asks (five
    evaluations and three of each calibration when it does not), in rounds."""
    source = "\n".join(cell.source for cell in _code_cells(_read(MEASURED)))
    assert f'int(os.environ.get("{EVALUATIONS_ENV}", "5"))' in source
    assert f'int(os.environ.get("{CALIBRATIONS_ENV}", "3"))' in source
    assert "live.in_rounds(" in source and '"evaluate": ((5, 0, 35), EVALUATIONS)' in source
    assert '"calibrate-1": ((5, 1, 30), CALIBRATIONS)' in source


def test_notebooks_stay_small_on_disk() -> None:
    """All notebooks together stay under 1 MB, so the repository stays light to clone and review."""
    assert sum((NOTEBOOKS / name).stat().st_size for name in ALL) < 1024 * 1024
