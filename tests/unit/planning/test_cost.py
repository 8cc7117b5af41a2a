"""Tests of the step cost model: stage latency and memory, prefix tables, gradient sync and step time."""

from __future__ import annotations

import pytest

from oobleck.planning.cost import (
    gradient_sync_s,
    layer_tables,
    plan_iteration_time_s,
    stage_latency_s,
    stage_memory_bytes,
)
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
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


def test_stage_latency_adds_compute_over_speedup_and_two_way_send(two_device_hardware: HardwareSpec) -> None:
    """Latency is compute / tensor-parallel speed-up plus 2 output bytes over the chosen link."""
    profile = make_profile()
    assert stage_latency_s(profile, two_device_hardware, 0, 2, 1, "none") == 3.0
    assert stage_latency_s(profile, two_device_hardware, 0, 2, 1, "intra") == 3.0 + 2 * 2000 / 4000
    assert stage_latency_s(profile, two_device_hardware, 0, 2, 1, "inter") == 3.0 + 2 * 2000 / 1000
    # Two devices at 50 % efficiency per doubling: speed-up 2 * 0.5 = 1.
    assert stage_latency_s(profile, two_device_hardware, 1, 3, 2, "none") == pytest.approx(5.0)


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


def test_unknown_send_kind_raises(two_device_hardware: HardwareSpec) -> None:
    """A send kind other than none/intra/inter raises ValueError naming the choices."""
    with pytest.raises(ValueError, match="send must be one of"):
        stage_latency_s(make_profile(), two_device_hardware, 0, 1, 1, "pcie")  # type: ignore[arg-type]


def test_gradient_sync_is_a_ring_over_the_largest_per_device_gradient(
    two_device_hardware: HardwareSpec, two_pipeline_plan: Plan
) -> None:
    """Pipelines sync 2 (p-1)/p times the largest per-device stage gradient; one pipeline syncs nothing."""
    profile = make_profile()
    plan = two_pipeline_plan
    # Largest per-device gradients: stage (2, 4) of pipeline 0 holds 40 * (3 + 4) = 280 bytes on 1 device.
    assert gradient_sync_s(plan.pipelines, profile, two_device_hardware) == pytest.approx(
        2 * 1 / 2 * 280 / 1000
    )
    assert gradient_sync_s(plan.pipelines[:1], profile, two_device_hardware) == 0.0


def test_plan_iteration_time_is_slowest_pipeline_plus_sync(
    two_device_hardware: HardwareSpec, two_pipeline_plan: Plan
) -> None:
    """Step time = max 1F1B pipeline time + gradient all-reduce time."""
    profile = make_profile()
    pipelines = two_pipeline_plan.pipelines
    slowest = max(2.0 + 3.0 + 3 * 3.0, 4.0 + 1 * 4.0)
    expected = slowest + gradient_sync_s(pipelines, profile, two_device_hardware)
    assert plan_iteration_time_s(pipelines, profile, two_device_hardware) == pytest.approx(expected)
