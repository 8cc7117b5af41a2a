"""Tests of the template figures and table: they show exactly the templates' stages and limits."""

from __future__ import annotations

import pytest

from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.plan import PipelineTemplate
from oobleck.planning.templates import generate_templates
from oobleck.viz.style import GIB
from oobleck.viz.templates import plot_stage_memory, plot_templates, templates_table

HARDWARE = get_hardware("a100-40")


@pytest.fixture(scope="module")
def templates() -> tuple[PipelineTemplate, ...]:
    profile = analytic_profile("llama2-13b", HARDWARE)
    return generate_templates(profile, HARDWARE, max_nodes=6, global_microbatches=64)


def test_table_has_one_row_per_template(templates: tuple[PipelineTemplate, ...]) -> None:
    """The table lists every template once, in order, with its node and stage counts first."""
    lines = templates_table(templates, HARDWARE).splitlines()
    assert len(lines) == 2 + len(templates)
    for line, template in zip(lines[2:], templates, strict=True):
        assert line.split()[:3] == [
            str(template.num_nodes),
            str(template.num_stages),
            str(template.stages[0].gpus),
        ]
        assert line.split()[7] == str(4 * template.num_stages)


def test_table_uses_each_templates_share_of_the_batch(templates: tuple[PipelineTemplate, ...]) -> None:
    """With B and N given, m is the template's share ceil(B n / N), at least one per stage."""
    rows = templates_table(templates, HARDWARE, global_microbatches=64, total_nodes=6).splitlines()[2:]
    shares = [int(row.split()[7]) for row in rows]
    assert shares == [max(t.num_stages, -(-64 * t.num_nodes // 6)) for t in templates]


def test_layer_chart_draws_every_stage_over_its_layers(templates: tuple[PipelineTemplate, ...]) -> None:
    """Each stage is one bar spanning exactly its layer range, on its template's row."""
    (ax,) = plot_templates(templates, title="t").axes
    bars = sorted((round(p.get_y() + p.get_height() / 2), p.get_x(), p.get_width()) for p in ax.patches)
    expected = sorted(
        (row, stage.first_layer, stage.end_layer - stage.first_layer)
        for row, template in enumerate(templates)
        for stage in template.stages
    )
    assert bars == expected
    assert ax.get_xlim() == (0, templates[0].num_layers)
    assert ax.get_title() == "t"


def test_memory_chart_marks_the_usable_limit(templates: tuple[PipelineTemplate, ...]) -> None:
    """The dashed line sits at the usable memory, and every stage's dot is below it."""
    (ax,) = plot_stage_memory(templates, HARDWARE).axes
    limits = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert limits == [HARDWARE.usable_memory_bytes / GIB, HARDWARE.gpu_memory_bytes / GIB]
    dots = [y for collection in ax.collections for _, y in collection.get_offsets()]
    assert len(dots) == sum(t.num_stages for t in templates) + len(templates)
    assert max(dots) <= HARDWARE.usable_memory_bytes / GIB
