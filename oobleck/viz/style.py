"""Shared look of every oobleck figure: sizes, resolution, colours and unit formatting.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through ``pyplot``: no global
figure registry, no backend choice, nothing shown twice. In a notebook a returned figure is rendered
by the inline backend's formatter; in a script or test it is saved or inspected directly.

Assumptions:
    * Notebooks are committed with their outputs, so the resolution is modest on purpose
      (:data:`DPI`): a figure is a few tens of kilobytes, and the whole notebook stays small.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 80
"""Dots per inch of every figure; 80 keeps a 9 x 4 inch figure near 40 KB as PNG."""

GIB = float(1 << 30)

POLICY_COLORS: dict[str, str] = {
    "oobleck": "#1b9e77",
    "checkpoint": "#d95f02",
    "varuna": "#7570b3",
    "bamboo": "#e7298a",
}
"""One colour per simulator policy, the same in every figure."""

PHASE_COLORS: dict[str, str] = {
    "detect": "#4c72b0",
    "plan": "#55a868",
    "rebuild_groups": "#c44e52",
    "transfer_state": "#8172b2",
    "first_step": "#ccb974",
}
"""One colour per recovery phase (the planning core's phase names)."""

_CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c")


def new_figure(
    width_in: float, height_in: float, *, rows: int = 1, cols: int = 1
) -> tuple[Figure, list[Axes]]:
    """A figure with a grid of axes, laid out by matplotlib's constrained layout.

    Args:
        width_in: Width in inches.
        height_in: Height in inches.
        rows: Rows of axes.
        cols: Columns of axes.

    Returns:
        The figure and its axes in row-major order (always a flat list, even for one axes).
    """
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def message_figure(message: str) -> Figure:
    """A one-line figure holding ``message``: what a slider callback shows instead of a traceback."""
    figure, (ax,) = new_figure(9, 1.0)
    ax.axis("off")
    ax.text(0, 0.5, message, va="center", fontsize=9, wrap=True)
    return figure


def cycle_color(index: int) -> str:
    """The ``index``-th colour of a qualitative palette that repeats every 8."""
    return _CYCLE[index % len(_CYCLE)]


def policy_color(policy: str) -> str:
    """The fixed colour of a simulator policy, grey for policies this module does not know."""
    return POLICY_COLORS.get(policy, "#8c8c8c")


def format_seconds(value_s: float) -> str:
    """A duration with a unit that keeps 2-3 significant digits: ``850 ms``, ``12.3 s``, ``2.5 h``."""
    magnitude = abs(value_s)
    if magnitude < 1:
        return f"{value_s * 1000:.3g} ms"
    if magnitude < 120:
        return f"{value_s:.3g} s"
    if magnitude < 7200:
        return f"{value_s / 60:.3g} min"
    return f"{value_s / 3600:.3g} h"
