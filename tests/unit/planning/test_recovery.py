"""Tests of recovery prediction: cost constants, detection, process groups and the busiest transfer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.groups import plan_group_shape
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Transfer
from oobleck.planning.recovery import (
    RecoveryConstants,
    RecoveryPrediction,
    plan_ranks,
    predict_recovery,
    rebuild_groups_s,
)


def test_detection_depends_on_failure_kind() -> None:
    """A hang costs interval * missed heartbeats; a disconnect costs the fixed detection delay."""
    constants = RecoveryConstants(heartbeat_interval_s=0.5, missed_heartbeats=3, disconnect_detect_s=0.1)
    assert constants.detect_s("hang") == 1.5
    assert constants.detect_s("disconnect") == 0.1
    with pytest.raises(ValueError, match="failure must be"):
        constants.detect_s("fire")  # type: ignore[arg-type]


def test_constants_load_from_dict_and_json(tmp_path: Path) -> None:
    """Constants round-trip through to_dict and load from a JSON file, missing keys keeping defaults."""
    constants = RecoveryConstants(restart_s=30.0, transfer_bandwidth_bytes_per_s=5e9)
    assert RecoveryConstants.from_dict(constants.to_dict()) == constants
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"plan_s": 0.2, "missed_heartbeats": 5}))
    loaded = RecoveryConstants.load(path)
    assert (loaded.plan_s, loaded.missed_heartbeats, loaded.restart_s) == (0.2, 5, 120.0)


def test_unknown_constant_key_raises_config_error_listing_valid_keys() -> None:
    """An unknown key is a ConfigError that names it and lists the valid keys."""
    with pytest.raises(
        ConfigError, match=r"costs.json: unknown key\(s\) \['detect'\]; valid keys: heartbeat"
    ):
        RecoveryConstants.from_dict({"detect": 1.0}, source="costs.json")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("plan_s", -1.0, "must be >= 0"),
        ("heartbeat_interval_s", 0, "must be > 0"),
        ("missed_heartbeats", 0, "must be >= 1"),
        ("missed_heartbeats", 2.5, "must be an integer"),
        ("restart_s", "soon", "must be a finite number"),
        ("checkpoint_load_bandwidth_bytes_per_s", 0.0, "must be > 0"),
    ],
)
def test_bad_constant_value_raises_config_error(key: str, value: object, rule: str) -> None:
    """A bad constant value is a one-line ConfigError naming the file, the key and the rule."""
    with pytest.raises(ConfigError, match=f"^costs.json: {key} {rule}"):
        RecoveryConstants.from_dict({key: value}, source="costs.json")


def test_bad_json_file_raises_config_error(tmp_path: Path) -> None:
    """A missing or malformed constants file raises ConfigError naming the path."""
    with pytest.raises(ConfigError, match="not found"):
        RecoveryConstants.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  'plan_s': 1}")
    with pytest.raises(ConfigError, match=r"broken.json:2: not valid JSON"):
        RecoveryConstants.load(broken)


def test_prediction_phases_sum_to_total() -> None:
    """to_dict names the five phases as the runtime records them, plus their total."""
    prediction = RecoveryPrediction(
        detect_s=1.0, plan_s=2.0, rebuild_groups_s=3.0, transfer_state_s=4.0, first_step_s=5.0
    )
    assert prediction.total_s == 15.0
    assert prediction.to_dict() == {
        "detect": 1.0,
        "plan": 2.0,
        "rebuild_groups": 3.0,
        "transfer_state": 4.0,
        "first_step": 5.0,
        "total": 15.0,
    }


def test_groups_are_the_holder_sets_and_pipeline_links_get_none(two_pipeline_plan: Plan) -> None:
    """Two holder sets ((0, 2) for layers 0-1, (1, 2) for 2-3) are two groups; stage links add none."""
    plan = two_pipeline_plan
    shape = plan_group_shape(plan)
    assert (shape.groups, shape.rounds, shape.largest_members) == (2, 2, 2)
    single = Plan(
        pipelines=plan.pipelines[:1],
        global_microbatches=4,
        microbatch_size=1,
        fault_tolerance=0,
        iteration_time_s=1,
    )
    assert plan_group_shape(single).groups == 0


def test_predict_recovery_charges_the_busiest_node(
    two_device_hardware: HardwareSpec, two_pipeline_plan: Plan
) -> None:
    """State transfer lasts as long as the node that sends or receives the most bytes."""
    plan = two_pipeline_plan
    transfers = [
        Transfer(layer=0, src_node=2, dst_node=0, bytes=600),
        Transfer(layer=1, src_node=2, dst_node=0, bytes=300),
        Transfer(layer=2, src_node=1, dst_node=3, bytes=500),
        Transfer(layer=3, src_node=4, dst_node=4, bytes=10_000),
    ]
    constants = RecoveryConstants(
        transfer_bandwidth_bytes_per_s=100.0, rebuild_groups_fixed_s=1.0, rebuild_groups_per_group_s=0.5
    )
    prediction = predict_recovery(plan, transfers, two_device_hardware, constants, failure="hang")
    assert prediction.transfer_state_s == pytest.approx(900 / 100.0)
    assert prediction.detect_s == constants.detect_s("hang")
    assert prediction.plan_s == constants.plan_s
    # 3 nodes x 2 devices re-initialise the world; the two groups share node 2: two rounds.
    expected = 1.0 + constants.rebuild_groups_per_rank_s * 6 + 2 * 0.5
    assert prediction.rebuild_groups_s == pytest.approx(expected)
    assert prediction.first_step_s == plan.iteration_time_s


def test_default_transfer_bandwidth_uses_every_nic_of_a_node(
    two_device_hardware: HardwareSpec, two_pipeline_plan: Plan
) -> None:
    """Without an override a node copies state at inter-node bandwidth times its devices."""
    prediction = predict_recovery(
        two_pipeline_plan, [Transfer(layer=0, src_node=2, dst_node=0, bytes=8000)], two_device_hardware
    )
    assert prediction.transfer_state_s == pytest.approx(8000 / (1000.0 * 2))
    assert prediction.detect_s == RecoveryConstants().disconnect_detect_s
    assert predict_recovery(two_pipeline_plan, [], two_device_hardware).transfer_state_s == 0.0


def test_group_shape_matches_holder_tuples_over_mixed_templates(two_pipeline_plan: Plan) -> None:
    """Counting per distinct template equals counting distinct Plan.holders tuples, copies included."""
    base = two_pipeline_plan
    shared = base.pipelines[0].template
    copy = PipelineTemplate.from_dict(shared.to_dict())
    other = base.pipelines[1].template
    pipelines = (
        Pipeline(template=shared, nodes=(10, 11), microbatches=2),
        Pipeline(template=copy, nodes=(12, 13), microbatches=2),
        Pipeline(template=other, nodes=(14,), microbatches=2),
        Pipeline(template=shared, nodes=(15, 16), microbatches=2),
    )
    plan = Plan(
        pipelines=pipelines, global_microbatches=8, microbatch_size=1, fault_tolerance=3, iteration_time_s=1
    )
    layers = shared.num_layers
    assert plan_group_shape(plan).groups == len({plan.holders(layer) for layer in range(layers)})
    assert plan_group_shape(plan).largest_members == 4


def test_rebuild_pays_per_round_not_per_group() -> None:
    """A heterogeneous plan's chain of overlapping groups costs its rounds, not its group count."""
    from tests.unit.planning.test_groups import _plan, _template

    plan = _plan([_template([0, 3, 6, 9, 12]), _template([0, 2, 4, 6, 8, 10, 12])])
    shape = plan_group_shape(plan)
    assert (shape.groups, shape.rounds) == (8, 2)
    constants = RecoveryConstants(rebuild_groups_fixed_s=0.5, rebuild_groups_per_group_s=0.1)
    predicted = predict_recovery(plan, [], _hardware(), constants).rebuild_groups_s
    assert predicted == pytest.approx(0.5 + constants.rebuild_groups_per_rank_s * 10 + 0.1 * 2)
    assert predicted == pytest.approx(rebuild_groups_s(constants, plan_ranks(plan), 2))


def test_rebuild_grows_with_the_world_not_with_its_groups() -> None:
    """Twice the pipelines of one template: same rounds, and the world term doubles with the ranks."""
    from tests.unit.planning.test_groups import _plan, _template

    small = _plan([_template([0, 2, 4])] * 2)
    large = _plan([_template([0, 2, 4])] * 4)
    assert plan_group_shape(small).rounds == plan_group_shape(large).rounds == 1
    constants = RecoveryConstants()
    grow = (
        predict_recovery(large, [], _hardware(), constants).rebuild_groups_s
        - predict_recovery(small, [], _hardware(), constants).rebuild_groups_s
    )
    assert grow == pytest.approx(4 * constants.rebuild_groups_per_rank_s)


def _hardware() -> HardwareSpec:
    return HardwareSpec(
        name="one-device",
        gpus_per_node=1,
        gpu_memory_bytes=1 << 30,
        peak_flops=1e12,
        intra_node_bandwidth_bytes_per_s=1e9,
        inter_node_bandwidth_bytes_per_s=1e9,
    )
