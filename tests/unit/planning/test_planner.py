"""Tests for oobleck.planning.planner: the facade wires templates, plans, recovery and predictions."""

from __future__ import annotations

import pytest

from oobleck.errors import PlanningError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner

HARDWARE = get_hardware("a100-40")


def make_planner(fault_tolerance: int = 1) -> Planner:
    return Planner(
        analytic_profile("llama2-13b", HARDWARE),
        HARDWARE,
        fault_tolerance=fault_tolerance,
        global_microbatches=256,
        microbatch_size=1,
        max_nodes=16,
    )


def test_templates_ascend_from_min_nodes() -> None:
    """Templates cover consecutive node counts starting at min_nodes."""
    planner = make_planner()
    sizes = [template.num_nodes for template in planner.templates]
    assert sizes[0] == planner.min_nodes == 2
    assert sizes == list(range(sizes[0], sizes[0] + len(sizes)))


def test_plan_uses_every_node_with_f_plus_one_pipelines() -> None:
    """A plan on 16 nodes uses each node once and keeps at least f + 1 pipelines."""
    planner = make_planner(fault_tolerance=2)
    plan = planner.plan(range(16))
    assert plan.nodes == tuple(range(16))
    assert len(plan.pipelines) >= 3
    assert sum(p.microbatches for p in plan.pipelines) == 256


def test_reconfigure_and_predict_recovery() -> None:
    """Losing a node yields a valid plan without it, and a prediction with all five phases."""
    planner = make_planner()
    plan = planner.plan(range(16))
    lost = plan.pipelines[0].nodes[0]
    reconfiguration = planner.reconfigure(plan, lost_nodes=[lost])
    assert lost not in reconfiguration.plan.nodes
    assert len(reconfiguration.plan.nodes) == 15
    prediction = planner.predict_recovery(reconfiguration)
    phases = prediction.to_dict()
    for phase in ("detect", "plan", "rebuild_groups", "transfer_state", "first_step"):
        assert phases[phase] >= 0
    assert prediction.total_s > 0
    if reconfiguration.transfers:
        assert prediction.transfer_state_s > 0


def test_two_planners_agree() -> None:
    """Every node computes the same plan and reconfiguration from the same inputs."""
    first, second = make_planner(), make_planner()
    plan = first.plan(range(12))
    assert plan == second.plan(reversed(range(12)))
    assert first.reconfigure(plan, lost_nodes=[3]) == second.reconfigure(plan, lost_nodes=[3])


def test_too_few_nodes_is_a_planning_error() -> None:
    """Asking for a plan below (f+1)*n0 nodes raises PlanningError."""
    planner = make_planner(fault_tolerance=3)
    with pytest.raises(PlanningError, match="needs >= \\(f\\+1\\)\\*n0"):
        planner.plan(range(4 * planner.min_nodes - 1))


def test_restart_plan_lowers_fault_tolerance_to_what_the_nodes_allow() -> None:
    """A restart on fewer than (f+1)*n0 nodes keeps the largest f' the nodes allow; below n0 it fails."""
    planner = make_planner(fault_tolerance=3)
    n0 = planner.min_nodes
    assert planner.restart_plan(range(16)) == planner.plan(range(16))
    reduced = planner.restart_plan(range(2 * n0 + 1))
    assert reduced.fault_tolerance == 1 and len(reduced.pipelines) >= 2
    assert planner.restart_plan(range(n0)).fault_tolerance == 0
    with pytest.raises(PlanningError):
        planner.restart_plan(range(n0 - 1))


def test_memoised_prediction_equals_the_recovery_model_along_a_chain() -> None:
    """Along losses and joins, Planner.predict_recovery equals recovery.predict_recovery, and each
    re-planned plan's seeded template counts equal the ones counted from its pipelines."""
    from oobleck.planning.plan import Plan
    from oobleck.planning.recovery import RecoveryConstants, predict_recovery

    planner = make_planner()
    plan = planner.plan(range(16))
    constants = RecoveryConstants()
    changes = [((3,), ()), ((9, 10), ()), ((), (3,)), ((0,), ()), ((), (9, 10, 0))]
    for lost, joined in changes:
        result = planner.reconfigure(plan, lost_nodes=lost, joined_nodes=joined)
        plan = result.plan
        counted = Plan.trusted(
            pipelines=plan.pipelines,
            global_microbatches=plan.global_microbatches,
            microbatch_size=plan.microbatch_size,
            fault_tolerance=plan.fault_tolerance,
            iteration_time_s=plan.iteration_time_s,
            spare_nodes=plan.spare_nodes,
        ).template_counts
        assert plan.template_counts == counted
        expected = predict_recovery(
            plan, result.transfers, planner.hardware, constants, first_step_s=plan.iteration_time_s
        )
        assert planner.predict_recovery(result, constants) == expected


def test_memoised_group_rounds_equal_the_group_shape_over_many_plans() -> None:
    """One planner's memoised group rounds equal plan_group_shape's for plans of 4..16 nodes and
    their one-loss re-plans (templates running one pipeline or several)."""
    from oobleck.planning.groups import plan_group_shape

    planner = make_planner()
    plans = [planner.plan(range(nodes)) for nodes in range(4, 17)]
    plans += [planner.reconfigure(plan, lost_nodes=(1,)).plan for plan in plans]
    assert any(number == 1 for plan in plans for _, number in plan.template_counts)
    assert any(number > 2 for plan in plans for _, number in plan.template_counts)
    for plan in plans + plans[::-1]:
        assert planner.group_rounds(plan) == plan_group_shape(plan).rounds
