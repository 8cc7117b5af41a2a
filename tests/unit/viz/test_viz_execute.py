"""Tests of the notebook execution helpers: kernel resolution, output comparison, README figure."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from oobleck.viz.execute import (
    README_TAG,
    CurrentInterpreterKernelManager,
    comparable_outputs,
    is_measured,
    output_shape,
    readme_figure,
)

PNG = b"\x89PNG\r\n\x1a\nfake"


def test_python3_kernel_is_this_interpreter_even_if_another_spec_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed python3 kernelspec pointing elsewhere does not change which interpreter runs."""
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/nonexistent/python"], "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    manager = CurrentInterpreterKernelManager(kernel_name="python3")
    assert manager.kernel_spec.argv[0] == sys.executable


def _figure_output(text: str, png: bytes = PNG) -> dict:
    return new_output("display_data", data={"text/plain": text, "image/png": base64.b64encode(png).decode()})


def test_comparison_keeps_text_and_mime_types_but_not_image_bytes_or_addresses() -> None:
    """Two runs that differ only in PNG bytes, widget ids and object addresses compare equal."""

    def notebook(png: bytes, address: str, model_id: str) -> dict:
        widget = {
            "text/plain": "interactive(...)",
            "application/vnd.jupyter.widget-view+json": {"model_id": model_id},
        }
        return new_notebook(
            cells=[
                new_markdown_cell("text"),
                new_code_cell(
                    "x",
                    outputs=[
                        new_output("stream", name="stdout", text=f"<obj at {address}>\n"),
                        _figure_output("<Figure size 720x256 with 1 Axes>", png),
                        new_output("display_data", data=widget),
                    ],
                ),
            ]
        )

    first = comparable_outputs(notebook(PNG, "0x7f00deadbeef", "a1"))
    assert first == comparable_outputs(notebook(PNG + b"x", "0x7f00cafef00d", "b2"))
    assert first[0][0] == ("stream", "stdout", "<obj at 0x?>\n")
    changed = new_notebook(
        cells=[new_code_cell("x", outputs=[new_output("stream", name="stdout", text="2\n")])]
    )
    assert comparable_outputs(changed) != comparable_outputs(
        new_notebook(cells=[new_code_cell("x", outputs=[new_output("stream", name="stdout", text="1\n")])])
    )


def test_readme_figure_is_the_tagged_cells_png() -> None:
    """Only the cell tagged for the README contributes its image; without one there is none."""
    tagged = new_code_cell("f", metadata={"tags": [README_TAG]}, outputs=[_figure_output("fig", PNG)])
    other = new_code_cell("g", outputs=[_figure_output("fig", b"other")])
    assert readme_figure(new_notebook(cells=[other, tagged])) == PNG
    assert readme_figure(new_notebook(cells=[other])) is None


def test_output_shape_drops_only_the_text_and_measured_flag_is_read_from_metadata() -> None:
    """Shapes keep kinds, stream names and MIME types; the measured flag lives in notebook metadata."""
    cells = [[("stream", "stdout", "12 ms\n"), ("display_data", "image/png", "text/plain", "<Figure>")]]
    assert output_shape(cells) == [[("stream", "stdout"), ("display_data", "image/png", "text/plain")]]
    assert is_measured(new_notebook(metadata={"oobleck": {"measured": True}}))
    assert not is_measured(new_notebook())
