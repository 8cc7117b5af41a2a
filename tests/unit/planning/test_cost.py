"""Tests of the cost model: stage latency and memory, step time, gradient sync and recovery phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.cost import (
    RecoveryConstants,
    RecoveryPrediction,
    gradient_sync_s,
    layer_tables,
    plan_iteration_time_s,
    predict_recovery,
    process_group_count,
    stage_latency_s,
    stage_memory_bytes,
)
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage, Transfer
from oobleck.planning.profile import LayerProfile, ModelProfile


def make_profile(count: int = 4) -> ModelProfile:
    """Layer i: compute (i+1) s, state 100 (i+1) bytes, activations 10 (i+1), output 1000 (i+1), grads 40."""
    layers = tuple(
        LayerProfile(
            name=f"layer.{i}",
            kind="embedding" if i == 0 else "head" if i == count - 1 else "block",
            forward_s=(i + 1) / 4,
            backward_s=3 * (i + 1) / 4,
            param_bytes=40 * (i + 1),
            grad_bytes=40 * (i + 1),
            optimizer_bytes=20 * (i + 1),
            activation_bytes=10 * (i + 1),
            output_bytes=1000 * (i + 1),
        )
        for i in range(count)
    )
    return ModelProfile(
        model="synthetic",
        config_fingerprint="t",
        device="t",
        dtype="float32",
        microbatch_size=1,
        layers=layers,
    )


HARDWARE = HardwareSpec(
    name="test",
    gpus_per_node=2,
    gpu_memory_bytes=1 << 30,
    peak_flops=1e12,
    intra_node_bandwidth_bytes_per_s=4000.0,
    inter_node_bandwidth_bytes_per_s=1000.0,
    tensor_parallel_efficiency=0.5,
)


def two_stage_template(latency: tuple[float, float] = (2.0, 3.0)) -> PipelineTemplate:
    """Layers 0-1 on node 0 and layers 2-3 on node 1, one device each."""
    stages = (
        Stage(first_layer=0, end_layer=2, node=0, gpus=1, latency_s=latency[0], memory_bytes=0),
        Stage(first_layer=2, end_layer=4, node=1, gpus=1, latency_s=latency[1], memory_bytes=0),
    )
    return PipelineTemplate(num_nodes=2, gpus_per_node=2, stages=stages)


def one_stage_template() -> PipelineTemplate:
    """All four layers on two devices of one node."""
    stage = Stage(first_layer=0, end_layer=4, node=0, gpus=2, latency_s=4.0, memory_bytes=0)
    return PipelineTemplate(num_nodes=1, gpus_per_node=2, stages=(stage,))


def make_plan() -> Plan:
    """Two pipelines with different stage boundaries on nodes 0-1 and 2."""
    pipelines = (
        Pipeline(template=two_stage_template(), nodes=(0, 1), microbatches=4),
        Pipeline(template=one_stage_template(), nodes=(2,), microbatches=2),
    )
    return Plan(
        pipelines=pipelines,
        global_microbatches=6,
        microbatch_size=1,
        fault_tolerance=1,
        iteration_time_s=12.5,
    )


def test_stage_latency_adds_compute_over_speedup_and_two_way_send() -> None:
    """Latency is compute / tensor-parallel speed-up plus 2 output bytes over the chosen link."""
    profile = make_profile()
    assert stage_latency_s(profile, HARDWARE, 0, 2, 1, "none") == 3.0
    assert stage_latency_s(profile, HARDWARE, 0, 2, 1, "intra") == 3.0 + 2 * 2000 / 4000
    assert stage_latency_s(profile, HARDWARE, 0, 2, 1, "inter") == 3.0 + 2 * 2000 / 1000
    # Two devices at 50 % efficiency per doubling: speed-up 2 * 0.5 = 1.
    assert stage_latency_s(profile, HARDWARE, 1, 3, 2, "none") == pytest.approx(5.0)


def test_stage_memory_counts_state_and_activations_in_flight() -> None:
    """Memory per device is (state + in_flight * activations) // gpus."""
    profile = make_profile()
    # Layers 1-2: state 100 * (2 + 3) = 500, activations 10 * 5 = 50.
    assert stage_memory_bytes(profile, 1, 3, 1, 1) == 550
    assert stage_memory_bytes(profile, 1, 3, 1, 3) == 650
    assert stage_memory_bytes(profile, 1, 3, 2, 3) == 325
    assert stage_memory_bytes(profile, 0, 1, 3, 1) == (100 + 10) // 3


def test_tables_are_read_only_prefix_sums() -> None:
    """The cached prefix tables hold exact sums and refuse writes."""
    tables = layer_tables(make_profile())
    assert list(tables.state_prefix_bytes) == [0, 100, 300, 600, 1000]
    assert tables.num_layers == 4
    with pytest.raises(ValueError, match="read-only"):
        tables.compute_prefix_s[0] = 1.0


@pytest.mark.parametrize(("first", "end"), [(2, 2), (-1, 2), (0, 5)])
def test_bad_layer_range_raises(first: int, end: int) -> None:
    """An empty or out-of-bounds layer range is a programming error (ValueError)."""
    with pytest.raises(ValueError, match="must be non-empty"):
        stage_memory_bytes(make_profile(), first, end, 1, 1)


def test_unknown_send_kind_raises() -> None:
    """A send kind other than none/intra/inter raises ValueError naming the choices."""
    with pytest.raises(ValueError, match="send must be one of"):
        stage_latency_s(make_profile(), HARDWARE, 0, 1, 1, "pcie")  # type: ignore[arg-type]


def test_gradient_sync_is_a_ring_over_the_largest_per_device_gradient() -> None:
    """Pipelines sync 2 (p-1)/p times the largest per-device stage gradient; one pipeline syncs nothing."""
    profile = make_profile()
    plan = make_plan()
    # Largest per-device gradients: stage (2, 4) of pipeline 0 holds 40 * (3 + 4) = 280 bytes on 1 device.
    assert gradient_sync_s(plan.pipelines, profile, HARDWARE) == pytest.approx(2 * 1 / 2 * 280 / 1000)
    assert gradient_sync_s(plan.pipelines[:1], profile, HARDWARE) == 0.0


def test_plan_iteration_time_is_slowest_pipeline_plus_sync() -> None:
    """Step time = max 1F1B pipeline time + gradient all-reduce time."""
    profile = make_profile()
    pipelines = make_plan().pipelines
    slowest = max(2.0 + 3.0 + 3 * 3.0, 4.0 + 1 * 4.0)
    expected = slowest + gradient_sync_s(pipelines, profile, HARDWARE)
    assert plan_iteration_time_s(pipelines, profile, HARDWARE) == pytest.approx(expected)


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


def test_process_groups_count_holder_sets_and_stage_links() -> None:
    """Two holder sets ((0, 2) for layers 0-1, (1, 2) for 2-3) plus one stage link make 3 groups."""
    plan = make_plan()
    assert process_group_count(plan) == 3
    single = Plan(
        pipelines=plan.pipelines[:1],
        global_microbatches=4,
        microbatch_size=1,
        fault_tolerance=0,
        iteration_time_s=1,
    )
    assert process_group_count(single) == 1


def test_predict_recovery_charges_the_busiest_node() -> None:
    """State transfer lasts as long as the node that sends or receives the most bytes."""
    plan = make_plan()
    transfers = [
        Transfer(layer=0, src_node=2, dst_node=0, bytes=600),
        Transfer(layer=1, src_node=2, dst_node=0, bytes=300),
        Transfer(layer=2, src_node=1, dst_node=3, bytes=500),
        Transfer(layer=3, src_node=4, dst_node=4, bytes=10_000),
    ]
    constants = RecoveryConstants(
        transfer_bandwidth_bytes_per_s=100.0, rebuild_groups_fixed_s=1.0, rebuild_groups_per_group_s=0.5
    )
    prediction = predict_recovery(plan, transfers, HARDWARE, constants, failure="hang")
    assert prediction.transfer_state_s == pytest.approx(900 / 100.0)
    assert prediction.detect_s == constants.detect_s("hang")
    assert prediction.plan_s == constants.plan_s
    assert prediction.rebuild_groups_s == pytest.approx(1.0 + 3 * 0.5)
    assert prediction.first_step_s == plan.iteration_time_s


def test_default_transfer_bandwidth_uses_every_nic_of_a_node() -> None:
    """Without an override a node copies state at inter-node bandwidth times its devices."""
    prediction = predict_recovery(
        make_plan(), [Transfer(layer=0, src_node=2, dst_node=0, bytes=8000)], HARDWARE
    )
    assert prediction.transfer_state_s == pytest.approx(8000 / (1000.0 * 2))
    assert prediction.detect_s == RecoveryConstants().disconnect_detect_s
    assert predict_recovery(make_plan(), [], HARDWARE).transfer_state_s == 0.0


def test_process_group_count_matches_holder_tuples_over_mixed_templates() -> None:
    """Counting per distinct template equals counting distinct Plan.holders tuples, copies included."""
    base = make_plan()
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
    expected = len({plan.holders(layer) for layer in range(layers)}) + sum(
        p.template.num_stages - 1 for p in pipelines
    )
    assert process_group_count(plan) == expected
