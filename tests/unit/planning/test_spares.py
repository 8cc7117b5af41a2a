"""Tests for hot spares: when plans leave nodes idle, how spares are stored and taken, and f > losses."""

from __future__ import annotations

import pytest

from oobleck.errors import ReconfigurationError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import get_hardware
from oobleck.planning.instantiate import instantiate
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.planning.profile import LayerProfile, ModelProfile
from oobleck.planning.reconfigure import reconfigure

HARDWARE = get_hardware("cpu")
LAYERS = 8


def _profile() -> ModelProfile:
    layers = tuple(
        LayerProfile(
            name=f"block.{i}",
            kind="block",
            forward_s=0.01,
            backward_s=0.02,
            param_bytes=400,
            grad_bytes=400,
            optimizer_bytes=600,
            activation_bytes=10,
            output_bytes=10,
        )
        for i in range(LAYERS)
    )
    return ModelProfile(
        model="tiny", config_fingerprint="x", device="cpu", dtype="float32", microbatch_size=1, layers=layers
    )


PROFILE = _profile()


def template(num_nodes: int) -> PipelineTemplate:
    """One stage per node over eight layers."""
    stages = tuple(
        Stage(
            first_layer=i * LAYERS // num_nodes,
            end_layer=(i + 1) * LAYERS // num_nodes,
            node=i,
            gpus=1,
            latency_s=0.03 * ((i + 1) * LAYERS // num_nodes - i * LAYERS // num_nodes) + 0.002,
            memory_bytes=0,
        )
        for i in range(num_nodes)
    )
    return PipelineTemplate(num_nodes=num_nodes, gpus_per_node=1, stages=stages)


TEMPLATES = [template(n) for n in range(2, 5)]


def spare_plan() -> Plan:
    """Three 2-node pipelines on nodes 0-5 and two spares 6, 7 (a batch of 6 feeds only 3 pipelines)."""
    return instantiate(
        TEMPLATES,
        range(8),
        fault_tolerance=1,
        global_microbatches=6,
        microbatch_size=1,
        profile=PROFILE,
        hardware=HARDWARE,
    )


def run(plan: Plan, lost: list[int] = (), joined: list[int] = ()):  # type: ignore[assignment]
    return reconfigure(
        plan, lost_nodes=lost, joined_nodes=joined, templates=TEMPLATES, profile=PROFILE, hardware=HARDWARE
    )


def test_nodes_the_batch_cannot_feed_are_spares() -> None:
    """More nodes than the batch's stages can use leaves the highest ids idle as spares, deterministically."""
    plan = spare_plan()
    assert [p.nodes for p in plan.pipelines] == [(0, 1), (2, 3), (4, 5)]
    assert plan.spare_nodes == (6, 7)
    assert plan.nodes == tuple(range(8))
    assert plan.pipeline_nodes == tuple(range(6))
    assert spare_plan() == plan


def test_spares_survive_a_json_round_trip() -> None:
    """to_dict lists the spares and from_dict restores an equal plan; old JSON without the key has none."""
    plan = spare_plan()
    data = plan.to_dict()
    assert data["spare_nodes"] == [6, 7]
    assert Plan.from_dict(data, gpus_per_node=1) == plan
    del data["spare_nodes"]
    assert Plan.from_dict(data, gpus_per_node=1).spare_nodes == ()


def test_a_failure_absorbed_by_a_spare_moves_no_layer_of_another_pipeline() -> None:
    """The lowest spare takes the lost node's place; only it receives state; every other pipeline is kept."""
    plan = spare_plan()
    result = run(plan, lost=[3])
    new = result.plan
    assert new.spare_nodes == (7,)
    assert new.pipelines[0] == plan.pipelines[0]
    assert new.pipelines[2] == plan.pipelines[2]
    assert new.pipelines[1].nodes == (2, 6)
    assert new.pipelines[1].template == plan.pipelines[1].template
    assert {t.dst_node for t in result.transfers} == {6}
    assert sorted(t.layer for t in result.transfers) == list(plan.pipelines[1].layers_of_node(3))
    assert new.iteration_time_s == plan.iteration_time_s


def test_losing_a_spare_changes_no_pipeline() -> None:
    """A lost spare leaves the pipelines as they were, with no copy."""
    plan = spare_plan()
    result = run(plan, lost=[7])
    assert result.plan.pipelines == plan.pipelines
    assert result.plan.spare_nodes == (6,)
    assert result.transfers == ()


def test_joined_nodes_of_a_plan_with_spares_wait_as_spares() -> None:
    """A plan that leaves nodes idle does not grow on a join; the joined node is one more spare."""
    result = run(spare_plan(), joined=[20])
    assert result.plan.pipelines == spare_plan().pipelines
    assert result.plan.spare_nodes == (6, 7, 20)


def test_more_losses_than_spares_fall_back_to_the_rules() -> None:
    """Three losses with two spares: two are replaced in place, the third pipeline's survivor merges."""
    plan = spare_plan()
    result = run(plan, lost=[1, 2, 4])
    assert result.plan.spare_nodes == ()
    assert [p.nodes for p in result.plan.pipelines][:1] == [(0, 6)]
    assert sorted(result.plan.nodes) == [0, 3, 5, 6, 7]


def rack_plan() -> Plan:
    """Eight 3-node pipelines on nodes 0-23, f = 1, no spares."""
    chosen = [template(3)] * 8
    counts = distribute_batch(chosen, 64)
    pipelines = tuple(
        Pipeline(template=t, nodes=tuple(range(3 * i, 3 * i + 3)), microbatches=b)
        for i, (t, b) in enumerate(zip(chosen, counts, strict=True))
    )
    return Plan(
        pipelines=pipelines,
        global_microbatches=64,
        microbatch_size=1,
        fault_tolerance=1,
        iteration_time_s=plan_iteration_time_s(pipelines, PROFILE, HARDWARE),
    )


def test_a_rack_of_eight_lost_at_once_is_reconfigured() -> None:
    """Losing 8 nodes at once (far more than f = 1) still gives a valid plan while replicas survive."""
    plan = rack_plan()
    result = run(plan, lost=list(range(8)))
    assert sorted(result.plan.nodes) == list(range(8, 24))
    assert len(result.plan.pipelines) >= 2
    for pipeline in result.plan.pipelines:
        assert [layer for stage in pipeline.template.stages for layer in stage.layers] == list(range(LAYERS))


def test_only_a_layer_without_replica_or_too_few_nodes_is_an_error() -> None:
    """Reconfiguration fails only when every holder of a layer is lost, or fewer than n0 nodes remain."""
    plan = rack_plan()
    holders_of_layer_0 = list(plan.holders(0))
    with pytest.raises(ReconfigurationError, match="lost every replica"):
        run(plan, lost=holders_of_layer_0)
    with pytest.raises(ReconfigurationError, match="fewer than the 2 nodes"):
        run(plan, lost=list(range(23)))
