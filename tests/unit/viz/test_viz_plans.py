"""Tests of the plan figures: they draw the planner's plan as is, and refuse gracefully."""

from __future__ import annotations

import pytest

from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.viz.plans import (
    plan_explorer,
    plan_summary,
    planner_summary,
    plot_plan,
    plot_scaling,
    scaling_curve,
)

HARDWARE = get_hardware("a100-40")
PROFILE = analytic_profile("llama2-13b", HARDWARE)


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(
        PROFILE, HARDWARE, fault_tolerance=1, global_microbatches=64, microbatch_size=1, max_nodes=7
    )


def test_summaries_state_n0_and_every_pipeline(planner: Planner) -> None:
    """The planner summary names n0; the plan summary has a header and one line per pipeline."""
    assert "n0 = 2 nodes of 8 x a100-40" in planner_summary(planner)
    plan = planner.plan(range(7))
    lines = plan_summary(plan).splitlines()
    assert lines[0].startswith(f"7 nodes, f=1: {len(plan.pipelines)} pipelines, B=64")
    assert len(lines) == 1 + len(plan.pipelines)


def test_summary_lists_spare_nodes() -> None:
    """A plan that leaves nodes idle names its spares in one extra line."""
    small_batch = Planner(
        PROFILE, HARDWARE, fault_tolerance=1, global_microbatches=4, microbatch_size=1, max_nodes=7
    )
    plan = small_batch.plan(range(7))
    assert plan.spare_nodes
    lines = plan_summary(plan).splitlines()
    assert lines[-1] == f"  spares (idle, taken first on a loss): nodes {list(plan.spare_nodes)}"


def test_plan_figure_has_one_block_per_node_over_its_layers(planner: Planner) -> None:
    """Each node of each pipeline is one bar spanning the layers it holds, labelled with its id."""
    plan = planner.plan(range(7))
    (ax,) = plot_plan(plan).axes
    bars = sorted(
        (round(p.get_y() + p.get_height() / 2), p.get_x(), p.get_x() + p.get_width()) for p in ax.patches
    )
    expected = sorted(
        (row, min(layers), max(layers) + 1)
        for row, pipeline in enumerate(plan.pipelines)
        for layers in (pipeline.layers_of_node(node) for node in pipeline.nodes)
    )
    assert bars == expected
    assert {text.get_text() for text in ax.texts} >= {f"n{node}" for node in plan.nodes}


def test_scaling_curve_skips_sizes_below_f_plus_one_pipelines(planner: Planner) -> None:
    """Sizes under (f + 1) * n0 = 4 are left out; throughput grows with nodes on the rest."""
    points = scaling_curve(planner, range(1, 8))
    assert [p.nodes for p in points] == [4, 5, 6, 7]
    assert all(p.pipelines >= 2 for p in points)
    assert [p.samples_per_s for p in points] == sorted(p.samples_per_s for p in points)
    (ax,) = plot_scaling(points).axes
    assert list(ax.get_lines()[1].get_ydata()) == [p.samples_per_s for p in points]


def test_plan_explorer_draws_the_reason_instead_of_raising() -> None:
    """A slider setting with too few nodes gives a figure that holds the planner's one-line reason."""
    explore = plan_explorer(PROFILE, HARDWARE)
    (ax,) = explore(nodes=3, fault_tolerance=1, global_microbatches=64).axes
    assert ax.texts[0].get_text().startswith("no plan: fault_tolerance=1 needs >= (f+1)*n0 = 4 nodes")
    (ax,) = explore(nodes=4, fault_tolerance=1, global_microbatches=64).axes
    assert len(ax.patches) == 4
