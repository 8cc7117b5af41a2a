"""Tests of hand-written pipeline templates: the original plugin's checks, pricing, planning, recovery."""

from __future__ import annotations

import logging

import pytest

from oobleck.errors import ConfigError, ReconfigurationError
from oobleck.planning.cost import stage_latency_s, stage_memory_bytes
from oobleck.planning.manual_templates import TemplateSpec, check_specs, manual_templates, parse_specs
from oobleck.planning.planner import Planner
from tests.unit.planning.test_templates import make_hardware, make_profile

SIX = make_profile([1.0, 2.0, 2.0, 2.0, 2.0, 1.0], state_bytes=[10] * 6, activation_bytes=[3] * 6)
"""Six layers: embedding 0, blocks 1-4, head 5."""


def specs(*templates: list[list[int]], microbatches: int | None = None) -> tuple[TemplateSpec, ...]:
    return parse_specs([{"stages": stages, "microbatches": microbatches} for stages in templates])


def refused(raw: list[object], num_layers: int = 6) -> str:
    with pytest.raises(ConfigError) as caught:
        check_specs(parse_specs(raw), num_layers)
    return str(caught.value)


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ([[0, 1, 2], [3, 4]], "pipelines[0].stages[1]: the last stage must hold the head (layer 5)"),
        ([[1, 2], [3, 4, 5]], "pipelines[0].stages[0]: the first stage must hold the embedding (layer 0)"),
        ([[1, 2], [3, 4, 5], [0]], "(it is in stages[2])"),
        ([[0, 1, 2], [2, 3, 4, 5]], "pipelines[0].stages[1]: layer 2 is already in stages[0]"),
        ([[0, 1], [3, 4, 5]], "pipelines[0].stages[1]: layer 2 is in no stage"),
        ([[0, 1], [4, 5]], "layers 2..3 are in no stage"),
        ([[0, 2, 1], [3, 4, 5]], "pipelines[0].stages[0]: [0, 2, 1] is not a contiguous ascending run"),
        (
            [[0, 1, 2], [3, 4, 5, 6]],
            "pipelines[0].stages[1]: layer 6 does not exist; the model has layers 0..5",
        ),
        ([[3, 4, 5], [0, 1, 2]], "pipelines[0].stages[0]: the first stage must hold the embedding"),
    ],
)
def test_each_split_rule_names_the_stage(stages: list[list[int]], expected: str) -> None:
    """Every rule of the original plugin (coverage, order, embedding first, head last) is refused by name."""
    assert expected in refused([{"stages": stages}])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "pipelines: expected a non-empty list"),
        ([[0, 1]], "pipelines[0]: expected a mapping"),
        ([{"stage": [[0]]}], "pipelines[0].stage: unknown key"),
        ([{"stages": []}], "pipelines[0].stages: expected a non-empty list"),
        ([{"stages": [[]]}], "pipelines[0].stages[0]: expected a non-empty list"),
        ([{"stages": [[0, "1"]]}], "pipelines[0].stages[0]: expected layer indices"),
        (
            [{"stages": [[0, 1, 2, 3, 4, 5]], "microbatches": 0}],
            "pipelines[0].microbatches: expected an integer >= 1",
        ),
        (
            [{"stages": [list(range(6))], "microbatches": 2}, {"stages": [[0, 1, 2], [3, 4, 5]]}],
            "pipelines[1].microbatches: missing while other templates set it",
        ),
    ],
)
def test_shape_errors_name_the_key(raw: list[object], expected: str) -> None:
    """Malformed entries are refused with the key path of the bad value."""
    assert expected in refused(raw)


def test_too_few_microbatches_for_the_stages_is_refused() -> None:
    """A pinned microbatch count below the stage count (1F1B needs one per stage) is refused."""
    message = refused([{"stages": [[0, 1], [2, 3], [4, 5]], "microbatches": 2}])
    assert message.startswith("pipelines[0].microbatches: 2 is fewer than its 3 stages")


def test_templates_are_priced_like_generated_ones() -> None:
    """Stage latency and memory of a manual template equal the cost model's figures for that split."""
    hardware = make_hardware(gpus=1)
    (template,) = manual_templates(specs([[0, 1, 2], [3, 4, 5]]), SIX, hardware)
    assert template.num_nodes == 2
    assert [(s.first_layer, s.end_layer, s.node) for s in template.stages] == [(0, 3, 0), (3, 6, 1)]
    assert template.stages[0].latency_s == stage_latency_s(SIX, hardware, 0, 3, 1, "inter")
    assert template.stages[1].latency_s == stage_latency_s(SIX, hardware, 3, 6, 1, "none")
    assert template.stages[0].memory_bytes == stage_memory_bytes(SIX, 0, 3, 1, 2)


def test_ranks_must_be_whole_nodes_and_fit_the_job() -> None:
    """Stages x TP degree must be a whole number of nodes, at most the job's nodes, one template per size."""
    two_gpus = make_hardware(gpus=2)
    with pytest.raises(ConfigError, match=r"pipelines\[0\]: 3 stages x TP degree 1 = 3 ranks, not a whole"):
        manual_templates(specs([[0, 1], [2, 3], [4, 5]]), SIX, two_gpus)
    (tp,) = manual_templates(specs([[0, 1, 2], [3, 4, 5]]), SIX, two_gpus, tp_degree=2)
    assert tp.num_nodes == 2 and {s.gpus for s in tp.stages} == {2}
    with pytest.raises(ConfigError, match=r"= 6 ranks need 6 nodes of 1 devices, the job has 4"):
        manual_templates(specs([[i] for i in range(6)]), SIX, make_hardware(), max_nodes=4)
    with pytest.raises(ConfigError, match=r"pipelines\[1\]: needs 2 nodes like pipelines\[0\]"):
        manual_templates(specs([[0, 1, 2], [3, 4, 5]], [[0], [1, 2, 3, 4, 5]]), SIX, make_hardware())


def test_a_stage_that_does_not_fit_memory_is_refused() -> None:
    """A stage whose memory exceeds one device is refused by name instead of failing at run time."""
    small = make_hardware(memory=40)
    with pytest.raises(ConfigError, match=r"pipelines\[0\]\.stages\[0\]: needs .* GiB per device"):
        manual_templates(specs([list(range(6))]), SIX, small)


def planner(
    templates: tuple[TemplateSpec, ...], *, fault_tolerance: int = 1, microbatches: int = 8
) -> Planner:
    return Planner(
        SIX,
        make_hardware(),
        fault_tolerance=fault_tolerance,
        global_microbatches=microbatches,
        microbatch_size=1,
        max_nodes=6,
        templates=templates,
    )


def test_planner_plans_only_with_the_manual_templates() -> None:
    """The planner instantiates the user's templates (not generated ones) and splits the batch over them."""
    user = planner(specs([[0, 1, 2], [3, 4, 5]], [[0, 1], [2, 3], [4, 5]]))
    assert [t.num_nodes for t in user.templates] == [2, 3]
    plan = user.plan(range(4))
    allowed = {tuple((s.first_layer, s.end_layer) for s in t.stages) for t in user.templates}
    assert all(
        tuple((s.first_layer, s.end_layer) for s in p.template.stages) in allowed for p in plan.pipelines
    )
    assert sum(p.microbatches for p in plan.pipelines) == 8 and len(plan.pipelines) >= 2


def test_pinned_microbatches_are_used_when_they_fill_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    """Pinned microbatches replace the split when they fill the batch; otherwise a warning says why not."""
    pinned = planner(specs([[0, 1, 2], [3, 4, 5]], microbatches=4))
    assert [p.microbatches for p in pinned.plan(range(4)).pipelines] == [4, 4]
    other = planner(specs([[0, 1, 2], [3, 4, 5]], microbatches=3))
    with caplog.at_level(logging.WARNING):
        plan = other.plan(range(4))
    assert sum(p.microbatches for p in plan.pipelines) == 8
    assert "add up to 6, the global batch has 8 microbatches" in caplog.text


def test_recovery_uses_the_manual_templates_when_they_fit() -> None:
    """After a loss the new plan is built from the user's templates, and the recovery note names them."""
    user = planner(specs([[0, 1, 2], [3, 4, 5]], [list(range(6))]))
    plan = user.plan(range(4))
    change = user.reconfigure(plan, lost_nodes=[1])
    assert 1 not in change.plan.nodes
    assert {id(p.template) for p in change.plan.pipelines} <= {id(t) for t in user.templates}
    note = user.manual_note(change.plan)
    assert note is not None and note.startswith("recovery uses your pipeline templates: 1 node [0-5]")
    generated = Planner(
        SIX, make_hardware(), fault_tolerance=1, global_microbatches=8, microbatch_size=1, max_nodes=4
    )
    assert generated.manual_note(generated.plan(range(4))) is None


def test_recovery_without_a_fitting_manual_template_names_templates_and_nodes() -> None:
    """When no plan of the user's templates fits the survivors, the error names them and the node count."""
    user = planner(specs([[0, 1, 2], [3, 4, 5]]), fault_tolerance=0)
    plan = user.plan(range(2))
    with pytest.raises(ReconfigurationError) as caught:
        user.reconfigure(plan, lost_nodes=[0])
    message = str(caught.value)
    assert message.startswith("no plan of your pipeline templates (2 nodes [0-2 | 3-5]) fits 1 nodes")
    assert "add a template for fewer nodes" in message
