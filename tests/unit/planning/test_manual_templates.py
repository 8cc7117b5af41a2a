"""Tests of hand-written pipeline templates: the original plugin's checks, pricing, planning, recovery."""

from __future__ import annotations

import logging
import random

import pytest

from oobleck.errors import ConfigError, ReconfigurationError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import stage_latency_s, stage_memory_bytes
from oobleck.planning.manual_templates import TemplateSpec, check_specs, manual_templates, parse_specs
from oobleck.planning.plan import Plan
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
        ([{"stages": [list(range(6))], "count": -1}], "pipelines[0].count: expected an integer >= 0"),
        ([{"stages": [list(range(6))], "count": True}], "pipelines[0].count: expected an integer >= 0"),
        (
            [{"stages": [list(range(6))], "count": 2}, {"stages": [[0, 1, 2], [3, 4, 5]]}],
            "pipelines[1].count: missing while other templates set it",
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
    templates: tuple[TemplateSpec, ...],
    *,
    fault_tolerance: int = 1,
    microbatches: int = 8,
    max_nodes: int = 6,
) -> Planner:
    return Planner(
        SIX,
        make_hardware(),
        fault_tolerance=fault_tolerance,
        global_microbatches=microbatches,
        microbatch_size=1,
        max_nodes=max_nodes,
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


ONE_NODE = [list(range(6))]
TWO_NODES = [[0, 1, 2], [3, 4, 5]]
THREE_NODES = [[0, 1], [2, 3], [4, 5]]


def counted(
    *entries: tuple[list[list[int]], int], microbatches: int | None = None
) -> tuple[TemplateSpec, ...]:
    """Specs with a ``count`` each, as the job's ``pipelines: [{stages: ..., count: k}, ...]``."""
    return parse_specs(
        [{"stages": stages, "count": count, "microbatches": microbatches} for stages, count in entries]
    )


def layout(plan: Plan) -> list[tuple[int, tuple[int, ...], int]]:
    """``(template nodes, node ids, microbatches)`` per pipeline, in plan order."""
    return [(p.template.num_nodes, p.nodes, p.microbatches) for p in plan.pipelines]


def test_counts_pin_a_heterogeneous_first_plan_the_planner_would_not_choose() -> None:
    """Counts give exactly those pipelines, smallest template on the lowest ids, the rest spare."""
    free = planner(specs(ONE_NODE, TWO_NODES)).plan(range(5))
    assert {p.template.num_nodes for p in free.pipelines} == {1}  # the planner's own rule: all 1-node
    plan = planner(counted((TWO_NODES, 1), (ONE_NODE, 2))).plan(range(5))
    assert [(nodes, ids) for nodes, ids, _ in layout(plan)] == [(1, (0,)), (1, (1,)), (2, (2, 3))]
    assert plan.spare_nodes == (4,)
    assert sum(p.microbatches for p in plan.pipelines) == 8
    assert all(p.microbatches >= p.template.num_stages for p in plan.pipelines)
    assert plan.fault_tolerance == 1


def test_counted_plan_is_the_same_for_any_node_order_and_entry_order() -> None:
    """Every worker derives one plan: node ids in any order, entries in any order, give equal plans."""
    expected = planner(counted((ONE_NODE, 2), (TWO_NODES, 1))).plan(range(5)).to_dict()
    ids = list(range(5))
    random.Random(7).shuffle(ids)
    assert planner(counted((TWO_NODES, 1), (ONE_NODE, 2))).plan(ids).to_dict() == expected


def test_counts_equal_to_the_planners_choice_give_its_plan() -> None:
    """Counts that match the planner's own choice reproduce its plan exactly (same order and split)."""
    free = planner(specs(ONE_NODE, TWO_NODES)).plan(range(4))
    assert layout(free) == [(1, (n,), 2) for n in range(4)]
    pinned = planner(counted((ONE_NODE, 4), (TWO_NODES, 0))).plan(range(4))
    assert pinned.to_dict() == free.to_dict()


def test_counts_keep_the_planners_batch_split_and_microbatch_pins() -> None:
    """The batch split over counted pipelines is the planner's; pinned microbatches still apply."""
    plan = planner(counted((ONE_NODE, 1), (THREE_NODES, 1)), microbatches=12).plan(range(4))
    shares = [p.microbatches for p in plan.pipelines]
    assert shares == list(distribute_batch([p.template for p in plan.pipelines], 12)) == [4, 8]
    pins = planner(counted((ONE_NODE, 1), (THREE_NODES, 1), microbatches=6), microbatches=12)
    assert [p.microbatches for p in pins.plan(range(4)).pipelines] == [6, 6]


@pytest.mark.parametrize(
    ("entries", "fault_tolerance", "microbatches", "expected"),
    [
        (
            [(ONE_NODE, 2), (TWO_NODES, 2)],
            1,
            8,
            "pipelines: count [2, 2] needs 2 x 1 + 2 x 2 = 6 nodes, the job has 5; lower a count or add "
            "1 nodes",
        ),
        (
            [(ONE_NODE, 1), (TWO_NODES, 1)],
            2,
            8,
            "pipelines: count [1, 1] gives 2 pipelines, fault_tolerance=2 needs >= 3; raise a count or lower "
            "fault_tolerance",
        ),
        (
            [(ONE_NODE, 0), (THREE_NODES, 1)],
            0,
            2,
            "pipelines: count [0, 1] gives 1 pipelines of 3 stages in all, the global batch has 2 "
            "microbatches and 1F1B needs one per stage; lower a count or raise global_batch to >= 3",
        ),
    ],
)
def test_counts_that_do_not_fit_are_refused_at_plan_time(
    entries: list[tuple[list[list[int]], int]], fault_tolerance: int, microbatches: int, expected: str
) -> None:
    """Counts needing too many nodes, fewer pipelines than f + 1, or more stages than B, are refused."""
    user = planner(counted(*entries), fault_tolerance=fault_tolerance, microbatches=microbatches)
    with pytest.raises(ConfigError) as caught:
        user.plan(range(5))
    assert str(caught.value) == expected


def test_recovery_replans_freely_and_zero_keeps_a_template_for_recovery() -> None:
    """After a loss the counts are not re-imposed; a count-0 template serves recovery only."""
    user = planner(counted((ONE_NODE, 1), (TWO_NODES, 1)))
    plan = user.plan(range(3))
    assert layout(plan) == [(1, (0,), layout(plan)[0][2]), (2, (1, 2), layout(plan)[1][2])]
    change = user.reconfigure(plan, lost_nodes=[2])
    assert [(nodes, ids) for nodes, ids, _ in layout(change.plan)] == [(1, (0,)), (1, (1,))]
    assert {t.layer for t in change.transfers} == {3, 4, 5}  # node 1 held layers 0-2 only
    spare_template = planner(counted((ONE_NODE, 0), (TWO_NODES, 2)))
    first = spare_template.plan(range(4))
    assert [nodes for nodes, _, _ in layout(first)] == [2, 2]
    after = spare_template.reconfigure(first, lost_nodes=[3]).plan
    assert 1 in {p.template.num_nodes for p in after.pipelines}


def test_restart_uses_counts_that_fit_else_the_planners_choice(caplog: pytest.LogCaptureFixture) -> None:
    """A restart plan keeps fitting counts; on too few nodes it falls back to the planner, with a warning."""
    user = planner(counted((ONE_NODE, 2), (TWO_NODES, 1)))
    assert layout(user.restart_plan(range(5))) == layout(user.plan(range(5)))
    with caplog.at_level(logging.WARNING):
        fallback = user.restart_plan(range(3))
    assert "needs 2 x 1 + 1 x 2 = 4 nodes, the job has 3" in caplog.text
    assert "restarting with the planner's choice of pipelines instead" in caplog.text
    assert sorted(n for p in fallback.pipelines for n in p.nodes) == [0, 1, 2]
