"""Pictures and tables of pipeline templates: where each template cuts the model, and what it costs.

A template is plain data (:class:`~oobleck.planning.plan.PipelineTemplate`), so everything here is
a pure function of the templates and the hardware; nothing is re-planned.

Assumptions:
    * Templates come from ``generate_templates`` (or ``Planner.templates``): one per node count,
      ascending, every stage of one template on the same number of devices.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import PipelineTemplate
from oobleck.planning.templates import microbatches_for
from oobleck.viz.style import GIB, cycle_color, format_seconds, new_figure

_ROW_HEIGHT_IN = 0.32
_MIN_LABEL_FRACTION = 0.035
"""A stage narrower than this fraction of the model gets no text label (it would not fit)."""


def templates_table(
    templates: Sequence[PipelineTemplate],
    hardware: HardwareSpec,
    *,
    global_microbatches: int | None = None,
    total_nodes: int | None = None,
) -> str:
    """A fixed-width text table, one row per template, for printing in a notebook or a terminal.

    Columns: nodes, stages, devices per stage, slowest and total stage latency, the microbatches
    ``m`` the template was optimised for (its share of the global batch, or ``4 * stages`` without
    one: see :func:`~oobleck.planning.templates.microbatches_for`), its 1F1B step time for ``m``,
    and the fullest device's memory as a share of what the hardware lets us use.

    Args:
        templates: The templates, any number.
        hardware: The node type they were planned for.
        global_microbatches: ``B`` the templates were generated with, if any.
        total_nodes: ``N`` the templates were generated with (default: the template's own size).

    Returns:
        The table as one string with a header line.
    """
    header = (
        f"{'nodes':>5} {'stages':>6} {'GPUs/stage':>10} {'slowest stage':>14} "
        f"{'all stages':>11} {'m':>4} {'step for m':>11} {'peak mem':>9}"
    )
    lines = [header, "-" * len(header)]
    for template in templates:
        peak = max(stage.memory_bytes for stage in template.stages)
        share = microbatches_for(
            template.num_stages,
            template.num_nodes,
            global_microbatches=global_microbatches,
            total_nodes=total_nodes,
        )
        lines.append(
            f"{template.num_nodes:>5} {template.num_stages:>6} {template.stages[0].gpus:>10} "
            f"{format_seconds(template.max_latency_s):>14} {format_seconds(template.sum_latency_s):>11} "
            f"{share:>4} {format_seconds(template.iteration_time_s(share)):>11} "
            f"{peak / hardware.usable_memory_bytes:>8.0%}"
        )
    return "\n".join(lines)


def plot_templates(templates: Sequence[PipelineTemplate], *, title: str = "") -> Figure:
    """Layer x template chart: each row is a template, each coloured block one stage.

    Blocks take the colour of the node that runs them, so a row shows both where the model is cut
    into stages (thin white gaps) and how stages are packed onto nodes (colour changes). The row
    label gives the node count, the stage count and the devices every stage uses.

    Args:
        templates: Templates in the order to draw them, top to bottom.
        title: Figure title (default: none).

    Returns:
        The figure.
    """
    figure, (ax,) = new_figure(9, 1.2 + _ROW_HEIGHT_IN * len(templates))
    num_layers = templates[0].num_layers
    for row, template in enumerate(templates):
        for stage in template.stages:
            width = stage.end_layer - stage.first_layer
            ax.barh(
                row,
                width,
                left=stage.first_layer,
                height=0.75,
                color=cycle_color(stage.node),
                edgecolor="white",
                linewidth=1.0,
            )
            if width / num_layers >= _MIN_LABEL_FRACTION:
                ax.text(stage.first_layer + width / 2, row, str(width), ha="center", va="center", fontsize=7)
    ax.set_yticks(
        range(len(templates)),
        [
            f"{t.num_nodes} node{'s' * (t.num_nodes > 1)}: {t.num_stages} x {t.stages[0].gpus} GPU"
            for t in templates
        ],
        fontsize=8,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, num_layers)
    ax.set_xlabel("layer (block labels: layers per stage; colour: node)")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title)
    return figure


def plot_stage_memory(
    templates: Sequence[PipelineTemplate], hardware: HardwareSpec, *, title: str = ""
) -> Figure:
    """Memory of every stage of every template, per device, against the hardware limit.

    Each dot is one stage; the dashed line is what the planner may use (device memory times the
    usable fraction), the dotted line the device's full memory. A template is feasible because all
    its dots sit under the dashed line; the highest dot is usually the first stage, which keeps the
    most microbatches of activations alive under 1F1B.

    Args:
        templates: Templates to show (x axis: their node counts).
        hardware: Supplies the limits.
        title: Figure title (default: none).

    Returns:
        The figure.
    """
    figure, (ax,) = new_figure(9, 3.2)
    for template in templates:
        memory = [stage.memory_bytes / GIB for stage in template.stages]
        ax.scatter([template.num_nodes] * len(memory), memory, s=14, color=cycle_color(0), alpha=0.7)
        ax.scatter([template.num_nodes], [max(memory)], s=30, color=cycle_color(3), zorder=3)
    ax.axhline(hardware.usable_memory_bytes / GIB, color="black", linestyle="--", linewidth=1)
    ax.axhline(hardware.gpu_memory_bytes / GIB, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks([template.num_nodes for template in templates])
    ax.set_xlabel("template (nodes per pipeline)")
    ax.set_ylabel("memory per device (GiB)")
    ax.set_ylim(bottom=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        handles=[
            Line2D([], [], marker="o", linestyle="", color=cycle_color(0), label="a stage"),
            Line2D([], [], marker="o", linestyle="", color=cycle_color(3), label="fullest stage"),
            Line2D(
                [], [], linestyle="--", color="black", label=f"usable ({hardware.memory_usable_fraction:.0%})"
            ),
            Line2D([], [], linestyle=":", color="grey", label=f"{hardware.name} device memory"),
        ],
        loc="lower right",
        fontsize=8,
    )
    if title:
        ax.set_title(title)
    return figure
