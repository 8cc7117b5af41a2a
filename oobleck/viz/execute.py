"""Run the notebooks headless, and reduce their outputs to what must not change between runs.

Used by ``notebooks/regenerate.py`` (which saves the executed notebooks) and by the notebook test
(which re-executes them and compares with the committed outputs), so both see the same kernel and
the same notion of "the same output".

Assumptions:
    * The kernel must be the interpreter running this code, whatever kernelspecs are installed: a
      user's ``python3`` kernelspec may point at another environment, and a fresh CI venv may have
      none. :class:`CurrentInterpreterKernelManager` resolves ``python3`` to ``sys.executable``
      through ipykernel's built-in spec and ignores every installed one.
    * PNG bytes are not compared: they change with matplotlib and font versions while the figure
      means the same. Text is compared exactly after removing memory addresses.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

README_TAG = "readme-figure"
"""Cell tag marking the figure a notebook contributes to the README (``docs/images/<stem>.png``)."""

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class CurrentInterpreterKernelManager(AsyncKernelManager):
    """A kernel manager whose only kernelspec is ``python3`` = the interpreter running this code."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        # NOTE: no kernel_dirs, so no installed spec can shadow ipykernel's native one, which
        # launches ``sys.executable -m ipykernel_launcher``.
        return KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)


def execute_notebook(path: str | Path, *, timeout_s: float = 600) -> nbformat.NotebookNode:
    """Execute a notebook top to bottom in a fresh kernel, in the notebook's folder.

    The notebook on disk is not modified. Cell timing metadata is not recorded (it would make
    every regeneration a diff); widget state is stored, as Jupyter does on save.

    Args:
        path: The ``.ipynb`` file.
        timeout_s: Longest a single cell may run.

    Returns:
        The executed notebook.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised.
        nbclient.exceptions.CellTimeoutError: a cell ran longer than ``timeout_s``.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=int(timeout_s),
        kernel_name=NATIVE_KERNEL_NAME,
        kernel_manager_class=CurrentInterpreterKernelManager,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    return notebook


def comparable_outputs(notebook: nbformat.NotebookNode) -> list[list[tuple[str, ...]]]:
    """The parts of a notebook's outputs that must be equal between two runs of the same code.

    Per code cell, per output: its type; for streams the stream name and text; for rich outputs
    the sorted MIME types, the ``text/plain`` representation (except for widgets, whose text holds
    nothing the code decides) and nothing of the image bytes; for errors the exception name.

    Args:
        notebook: An executed notebook.

    Returns:
        One list per code cell, in order.
    """
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cells.append([_comparable(output) for output in cell.get("outputs", [])])
    return cells


def output_shape(cells: list[list[tuple[str, ...]]]) -> list[list[tuple[str, ...]]]:
    """:func:`comparable_outputs` without the text: output kinds, stream names and MIME types.

    What stays equal between two runs of a notebook that measures real processes (its printed
    numbers differ on every run, but the same cells print and the same cells draw).
    """
    return [[output[:2] if output[0] == "stream" else output[:-1] for output in cell] for cell in cells]


def is_measured(notebook: nbformat.NotebookNode) -> bool:
    """Whether the notebook measures real runs (metadata ``oobleck.measured``): compare its shape only."""
    return bool(notebook.metadata.get("oobleck", {}).get("measured", False))


def readme_figure(notebook: nbformat.NotebookNode) -> bytes | None:
    """The PNG output of the cell tagged ``readme-figure`` (its last PNG), or ``None``.

    Args:
        notebook: An executed notebook.

    Returns:
        PNG bytes, or ``None`` when no tagged cell produced a PNG.
    """
    for cell in notebook.cells:
        if README_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if images:
            return base64.b64decode(images[-1])
    return None


def _comparable(output: Any) -> tuple[str, ...]:
    kind = output["output_type"]
    if kind == "stream":
        return (kind, output["name"], _normalise(output["text"]))
    if kind == "error":
        return (kind, output["ename"])
    data = output.get("data", {})
    mimes = tuple(sorted(data))
    text = "" if _WIDGET_MIME in data else _normalise(data.get("text/plain", ""))
    return (kind, *mimes, text)


def _normalise(text: str | list[str]) -> str:
    joined = "".join(text) if isinstance(text, list) else text
    return _ADDRESS.sub("0x?", joined)
