"""Pictures of instantiated plans: which nodes run which layers, and how throughput scales with N.

The plans come from the planning core's :class:`~oobleck.planning.planner.Planner`; this module only
asks it for plans and draws them, so a figure always shows exactly what the runtime would execute.

Assumptions:
    * Node ids of a plan are small non-negative integers (they pick colours, which repeat every 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from matplotlib.figure import Figure

from oobleck.errors import OobleckError, PlanningError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.viz.style import GIB, cycle_color, format_seconds, message_figure, new_figure

_ROW_HEIGHT_IN = 0.34


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingPoint:
    """The plan the planner picks for one cluster size, reduced to what a scaling curve shows."""

    nodes: int
    pipelines: int
    """Pipelines instantiated (at least f + 1)."""
    iteration_time_s: float
    samples_per_s: float


def planner_summary(planner: Planner) -> str:
    """Two lines: the model's size, and ``n0`` with the range of templates the planner built.

    Args:
        planner: A planner.

    Returns:
        Printable text.
    """
    profile, hardware, built = planner.profile, planner.hardware, planner.templates
    return (
        f"{profile.model}: {profile.num_layers} layers, {profile.total_state_bytes / GIB:.0f} GiB of "
        f"weights, gradients and optimizer state\n"
        f"n0 = {planner.min_nodes} nodes of {hardware.gpus_per_node} x {hardware.name}; templates for "
        f"{built[0].num_nodes}..{built[-1].num_nodes} nodes"
    )


def plan_summary(plan: Plan) -> str:
    """One line per pipeline (nodes, stages, microbatches, step time) under a one-line header.

    Args:
        plan: Any plan.

    Returns:
        Printable text; the header states the plan's global numbers.
    """
    lines = [
        f"{len(plan.nodes)} nodes, f={plan.fault_tolerance}: {len(plan.pipelines)} pipelines, "
        f"B={plan.global_microbatches} microbatches of {plan.microbatch_size}, "
        f"step {format_seconds(plan.iteration_time_s)}, {plan.samples_per_s:.4g} samples/s"
    ]
    for index, pipeline in enumerate(plan.pipelines):
        lines.append(
            f"  pipeline {index}: nodes {list(pipeline.nodes)}, {pipeline.template.num_stages} stages, "
            f"{pipeline.microbatches} microbatches, {format_seconds(pipeline.iteration_time_s)}"
        )
    if plan.spare_nodes:
        # NOTE: only plans that leave nodes idle get this line, so existing outputs are unchanged.
        lines.append(f"  spares (idle, taken first on a loss): nodes {list(plan.spare_nodes)}")
    return "\n".join(lines)


def plot_plan(plan: Plan, *, title: str = "") -> Figure:
    """Pipelines as rows over the layer axis, each block coloured by the node id that runs it.

    Read a column to see a layer's replicas (one per pipeline: what recovery copies from), and the
    right-hand labels to see how the fixed global batch is split so all pipelines finish together.

    Args:
        plan: The plan to draw.
        title: Figure title; default states node count, f, pipelines and throughput.

    Returns:
        The figure.
    """
    pipelines = plan.pipelines
    figure, (ax,) = new_figure(9, 1.3 + _ROW_HEIGHT_IN * len(pipelines))
    num_layers = pipelines[0].template.num_layers
    for row, pipeline in enumerate(pipelines):
        for node_index, node in enumerate(pipeline.nodes):
            layers = [s for s in pipeline.template.stages if s.node == node_index]
            first, end = layers[0].first_layer, layers[-1].end_layer
            ax.barh(row, end - first, left=first, height=0.75, color=cycle_color(node), edgecolor="white")
            ax.text((first + end) / 2, row, f"n{node}", ha="center", va="center", fontsize=7)
        ax.text(
            num_layers * 1.01,
            row,
            f"{pipeline.microbatches} mb, {format_seconds(pipeline.iteration_time_s)}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(pipelines)), [f"pipeline {i}" for i in range(len(pipelines))], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, num_layers)
    ax.set_xlabel("layer (block label: node id; right: microbatches per step and pipeline step time)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(
        title
        or f"{len(plan.nodes)} nodes, f={plan.fault_tolerance}: {len(pipelines)} pipelines, "
        f"B={plan.global_microbatches}, {plan.samples_per_s:.4g} samples/s"
    )
    return figure


def scaling_curve(planner: Planner, node_counts: Iterable[int]) -> tuple[ScalingPoint, ...]:
    """Plan the job on clusters of each size and record the predicted throughput.

    Node counts the planner cannot serve (fewer than ``(f + 1) * n0``) are left out, so a caller
    can pass a plain range.

    Args:
        planner: The planner (model, hardware, f, batch).
        node_counts: Cluster sizes to try; nodes ``0 .. n-1`` are used for size ``n``.

    Returns:
        One point per feasible size, in the order given.
    """
    points = []
    for nodes in node_counts:
        try:
            plan = planner.plan(range(nodes))
        except PlanningError:
            continue
        points.append(
            ScalingPoint(
                nodes=nodes,
                pipelines=len(plan.pipelines),
                iteration_time_s=plan.iteration_time_s,
                samples_per_s=plan.samples_per_s,
            )
        )
    return tuple(points)


def plot_scaling(points: tuple[ScalingPoint, ...], *, title: str = "") -> Figure:
    """Throughput against cluster size, with linear scaling from the smallest size for reference.

    Because the global batch is fixed, more nodes mean fewer microbatches per pipeline and a larger
    share of pipeline fill and drain: the curve bends below the linear line, and the labels show
    how many pipelines each size runs.

    Args:
        points: Output of :func:`scaling_curve` (at least one point).
        title: Figure title (default: none).

    Returns:
        The figure.
    """
    figure, (ax,) = new_figure(9, 3.2)
    nodes = [point.nodes for point in points]
    throughput = [point.samples_per_s for point in points]
    base = points[0]
    ax.plot(nodes, [base.samples_per_s * n / base.nodes for n in nodes], "--", color="grey", label="linear")
    ax.plot(nodes, throughput, "o-", color=cycle_color(0), label="planned")
    for point in points:
        ax.annotate(
            str(point.pipelines),
            (point.nodes, point.samples_per_s),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_xlabel("nodes (labels: pipelines)")
    ax.set_ylabel("samples / s")
    ax.set_ylim(bottom=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return figure


def plan_explorer(profile: ModelProfile, hardware: HardwareSpec) -> Callable[[int, int, int], Figure]:
    """The callback behind the notebook's plan sliders: ``interact(plan_explorer(p, h), nodes=...)``.

    The returned function plans ``nodes`` nodes from scratch for its arguments and draws the plan;
    each of its parameters (``nodes``, ``fault_tolerance``, ``global_microbatches``) is one slider.
    Templates are regenerated on every call (they depend on the batch and the cluster size, and take
    milliseconds). A request the planner refuses (too few nodes for ``f``, a batch smaller than a
    pipeline's stage count) is drawn as a figure holding the planner's one-line reason, so a slider
    never produces a traceback.

    Args:
        profile: Model profile (its microbatch size is the plans').
        hardware: Node type.

    Returns:
        ``explore_plan(nodes, fault_tolerance, global_microbatches) -> Figure``.
    """

    def explore_plan(nodes: int, fault_tolerance: int, global_microbatches: int) -> Figure:
        try:
            planner = Planner(
                profile,
                hardware,
                fault_tolerance=fault_tolerance,
                global_microbatches=global_microbatches,
                microbatch_size=profile.microbatch_size,
                max_nodes=nodes,
            )
            return plot_plan(planner.plan(range(nodes)))
        except OobleckError as error:
            return message_figure(f"no plan: {error}")

    return explore_plan
