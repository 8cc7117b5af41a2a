"""Tests of the template search: exact against brute force, well-formed, deterministic, fast to fail."""

from __future__ import annotations

import math
import random
from itertools import combinations, pairwise

import pytest

from oobleck.errors import ConfigError, PlanningError
from oobleck.planning.cost import stage_latency_s, stage_memory_bytes
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import PipelineTemplate
from oobleck.planning.profile import LayerProfile, ModelProfile
from oobleck.planning.templates import generate_templates, microbatches_for


def make_profile(
    compute_s: list[float],
    *,
    state_bytes: list[int] | None = None,
    activation_bytes: list[int] | None = None,
    output_bytes: list[int] | None = None,
    model: str = "synthetic",
) -> ModelProfile:
    """A profile with an embedding, blocks and a head; state bytes are all parameters."""
    count = len(compute_s)
    state = state_bytes or [1] * count
    act = activation_bytes or [0] * count
    out = output_bytes or [0] * count
    layers = tuple(
        LayerProfile(
            name=f"layer.{i}",
            kind="embedding" if i == 0 else "head" if i == count - 1 else "block",
            forward_s=compute_s[i] / 3,
            backward_s=compute_s[i] - compute_s[i] / 3,
            param_bytes=state[i],
            grad_bytes=0,
            optimizer_bytes=0,
            activation_bytes=act[i],
            output_bytes=out[i],
        )
        for i in range(count)
    )
    return ModelProfile(
        model=model,
        config_fingerprint="test",
        device="test",
        dtype="float32",
        microbatch_size=1,
        layers=layers,
    )


def make_hardware(
    gpus: int = 1, memory: int = 1 << 40, *, intra: float = 1e12, inter: float = 1e12, tp: float = 0.9
) -> HardwareSpec:
    """A node type whose usable memory is exactly ``memory`` bytes per device."""
    return HardwareSpec(
        name="test",
        gpus_per_node=gpus,
        gpu_memory_bytes=memory,
        peak_flops=1e12,
        memory_usable_fraction=1.0,
        intra_node_bandwidth_bytes_per_s=intra,
        inter_node_bandwidth_bytes_per_s=inter,
        tensor_parallel_efficiency=tp,
    )


def brute_force(
    profile: ModelProfile,
    hardware: HardwareSpec,
    max_nodes: int,
    global_microbatches: int | None,
    total_nodes: int | None,
) -> dict[int, float]:
    """Best 1F1B time per node count over every contiguous split and devices-per-stage."""
    layers = profile.num_layers
    gpus = hardware.gpus_per_node
    best: dict[int, float] = {}
    for degree in (d for d in (1, 2, 4, 8) if gpus % d == 0):
        per_node = gpus // degree
        for nodes in range(1, max_nodes + 1):
            stages = nodes * per_node
            if stages > layers:
                break
            if global_microbatches is None:
                micro = 4 * stages
            else:
                micro = max(stages, math.ceil(global_microbatches * nodes / total_nodes))
            for cuts in combinations(range(1, layers), stages - 1):
                bounds = (0, *cuts, layers)
                latencies = []
                for position in range(stages):
                    back = stages - 1 - position
                    first, end = bounds[position], bounds[position + 1]
                    if (
                        stage_memory_bytes(profile, first, end, degree, back + 1)
                        > hardware.usable_memory_bytes
                    ):
                        break
                    send = "none" if back == 0 else "inter" if back % per_node == 0 else "intra"
                    latencies.append(stage_latency_s(profile, hardware, first, end, degree, send))
                else:
                    value = sum(latencies) + (micro - 1) * max(latencies)
                    best[nodes] = min(best.get(nodes, math.inf), value)
    return best


def contiguous_from_smallest(best: dict[int, float]) -> list[int]:
    """Node counts n0, n0 + 1, ... up to the first gap: what generate_templates returns."""
    counts = [min(best)]
    while counts[-1] + 1 in best:
        counts.append(counts[-1] + 1)
    return counts


def random_instance(rng: random.Random) -> tuple[ModelProfile, HardwareSpec, dict[str, int | None]]:
    count = rng.randint(2, 7)
    profile = make_profile(
        [rng.uniform(0.1, 1.0) for _ in range(count)],
        state_bytes=[rng.randint(1, 100) for _ in range(count)],
        activation_bytes=[rng.randint(0, 40) for _ in range(count)],
        output_bytes=[rng.randint(0, 1000) for _ in range(count)],
    )
    hardware = make_hardware(
        rng.choice((1, 2, 4)),
        rng.randint(30, 400),
        intra=rng.uniform(500.0, 5000.0),
        inter=rng.uniform(50.0, 500.0),
        tp=rng.uniform(0.5, 1.0),
    )
    batch = rng.choice((None, rng.randint(1, 40)))
    options: dict[str, int | None] = {
        "max_nodes": rng.randint(1, 3),
        "global_microbatches": batch,
        "total_nodes": None if batch is None else rng.randint(3, 8),
    }
    return profile, hardware, options


def assert_well_formed(template: PipelineTemplate, profile: ModelProfile, hardware: HardwareSpec) -> None:
    """Stages tile the layers in order, fill each node's devices and fit in memory."""
    stages = template.stages
    assert stages[0].first_layer == 0
    assert stages[-1].end_layer == profile.num_layers
    for before, after in pairwise(stages):
        assert before.end_layer == after.first_layer
        assert before.node <= after.node
    degree = stages[0].gpus
    assert all(stage.gpus == degree for stage in stages)
    assert hardware.gpus_per_node % degree == 0
    assert degree & (degree - 1) == 0
    for node in range(template.num_nodes):
        assert sum(stage.gpus for stage in stages if stage.node == node) == hardware.gpus_per_node
    assert template.gpus_per_node == hardware.gpus_per_node
    for position, stage in enumerate(stages):
        back = template.num_stages - 1 - position
        assert stage.memory_bytes == stage_memory_bytes(
            profile, stage.first_layer, stage.end_layer, degree, back + 1
        )
        assert stage.memory_bytes <= hardware.usable_memory_bytes


def test_matches_brute_force_on_random_instances() -> None:
    """On 300 seeded random instances every template's 1F1B time equals the brute-force optimum."""
    rng = random.Random(2024)
    checked = 0
    for _ in range(300):
        profile, hardware, options = random_instance(rng)
        expected = brute_force(profile, hardware, **options)
        if not expected:
            with pytest.raises(PlanningError):
                generate_templates(profile, hardware, **options)
            continue
        templates = generate_templates(profile, hardware, **options)
        assert [t.num_nodes for t in templates] == contiguous_from_smallest(expected)
        for template in templates:
            micro = microbatches_for(
                template.num_stages,
                template.num_nodes,
                global_microbatches=options["global_microbatches"],
                total_nodes=options["total_nodes"],
            )
            assert template.iteration_time_s(micro) == pytest.approx(expected[template.num_nodes], rel=1e-12)
            assert_well_formed(template, profile, hardware)
            checked += 1
    assert checked > 300


def test_templates_are_well_formed_with_tensor_parallel_nodes() -> None:
    """Templates on 4-device nodes tile every layer once, fill every device and fit in memory."""
    rng = random.Random(7)
    profile = make_profile(
        [rng.uniform(0.5, 1.0) for _ in range(12)],
        state_bytes=[rng.randint(50, 100) for _ in range(12)],
        activation_bytes=[rng.randint(1, 10) for _ in range(12)],
        output_bytes=[rng.randint(1, 100) for _ in range(12)],
    )
    hardware = make_hardware(4, 400, intra=1e3, inter=1e2)
    templates = generate_templates(profile, hardware, max_nodes=6)
    assert [t.num_nodes for t in templates] == list(range(templates[0].num_nodes, 7))
    for template in templates:
        assert_well_formed(template, profile, hardware)
        for position, stage in enumerate(template.stages):
            back = template.num_stages - 1 - position
            per_node = hardware.gpus_per_node // stage.gpus
            send = "none" if back == 0 else "inter" if back % per_node == 0 else "intra"
            assert stage.latency_s == stage_latency_s(
                profile, hardware, stage.first_layer, stage.end_layer, stage.gpus, send
            )


def test_equal_layers_split_evenly() -> None:
    """Eight equal layers with free links split 8, 4+4, and 2+2+2+2 over 1, 2 and 4 nodes."""
    profile = make_profile([1.0] * 8)
    templates = generate_templates(profile, make_hardware(1), max_nodes=4)
    assert [t.num_nodes for t in templates] == [1, 2, 3, 4]
    assert [(s.first_layer, s.end_layer) for s in templates[1].stages] == [(0, 4), (4, 8)]
    assert [(s.first_layer, s.end_layer) for s in templates[3].stages] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert templates[3].max_latency_s == pytest.approx(2.0)
    assert [s.node for s in templates[3].stages] == [0, 1, 2, 3]


def test_memory_sets_the_smallest_pipeline() -> None:
    """Layers of 10 bytes on 25-byte devices need at least two nodes, so n0 is 2."""
    profile = make_profile([1.0] * 4, state_bytes=[10] * 4)
    templates = generate_templates(profile, make_hardware(1, 25), max_nodes=4)
    assert templates[0].num_nodes == 2
    assert all(stage.memory_bytes <= 25 for t in templates for stage in t.stages)


def test_first_stage_holds_the_most_microbatches() -> None:
    """With activations dominating memory, the first stage (most in flight) gets the fewest layers."""
    profile = make_profile([1.0] * 6, state_bytes=[1] * 6, activation_bytes=[10] * 6)
    (template,) = generate_templates(profile, make_hardware(1, 60), max_nodes=2)[-1:]
    assert template.num_nodes == 2
    assert [(s.first_layer, s.end_layer) for s in template.stages] == [(0, 2), (2, 6)]
    assert template.stages[0].memory_bytes == 2 * (1 + 2 * 10) // 1


def test_max_gpus_per_stage_limits_tensor_parallel_degree() -> None:
    """Perfect tensor parallelism wins on one node, and max_gpus_per_stage=1 forbids it."""
    profile = make_profile([1.0] * 8)
    hardware = make_hardware(4, tp=1.0)
    wide = generate_templates(profile, hardware, max_nodes=1)
    narrow = generate_templates(profile, hardware, max_nodes=1, max_gpus_per_stage=1)
    assert [(s.gpus, s.latency_s) for s in wide[0].stages] == [(4, 2.0)]
    assert narrow[0].num_stages == 4
    assert all(stage.gpus == 1 and type(stage.node) is int for stage in narrow[0].stages)
    assert narrow[0].stage_devices() == ((0, (0,)), (0, (1,)), (0, (2,)), (0, (3,)))


def test_output_is_deterministic() -> None:
    """Two searches on the same inputs return equal templates."""
    rng = random.Random(3)
    profile = make_profile(
        [rng.choice((0.5, 1.0)) for _ in range(10)], output_bytes=[rng.randint(0, 5) for _ in range(10)]
    )
    hardware = make_hardware(2, intra=10.0, inter=1.0)
    first = generate_templates(profile, hardware, max_nodes=5, global_microbatches=16, total_nodes=8)
    second = generate_templates(profile, hardware, max_nodes=5, global_microbatches=16, total_nodes=8)
    assert first == second


def test_model_that_fits_nowhere_raises_with_numbers() -> None:
    """A model larger than every allowed pipeline raises PlanningError naming model, sizes and fixes."""
    profile = make_profile([1.0] * 3, state_bytes=[100 << 30] * 3, model="huge")
    with pytest.raises(PlanningError) as caught:
        generate_templates(profile, make_hardware(2, 16 << 30), max_nodes=2)
    message = str(caught.value)
    assert "'huge'" in message
    assert "300.0 GiB" in message
    assert ">= 10 node(s)" in message
    assert "use more nodes" in message
    assert "\n" not in message


def test_a_small_model_that_fits_nowhere_is_reported_in_units_that_show_its_size() -> None:
    """Megabyte-sized state on a kilobyte device reads as MiB and KiB, never as "0.0 GiB"."""
    profile = make_profile([1.0] * 3, state_bytes=[3 << 20] * 3, model="small")
    with pytest.raises(PlanningError) as caught:
        generate_templates(profile, make_hardware(1, 512 << 10), max_nodes=2)
    message = str(caught.value)
    assert "its state is 9.0 MiB" in message
    assert "KiB usable each" in message
    assert "0.0 GiB" not in message


@pytest.mark.parametrize("argument", ["max_nodes", "global_microbatches", "max_gpus_per_stage"])
def test_bad_arguments_raise_config_error(argument: str) -> None:
    """A non-positive count raises ConfigError naming the argument and the bad value."""
    options = {"max_nodes": 2, argument: 0}
    with pytest.raises(ConfigError, match=f"{argument} must be a positive integer, got 0"):
        generate_templates(make_profile([1.0] * 3), make_hardware(1), **options)


def test_microbatches_follow_the_batch_share_or_four_per_stage() -> None:
    """m is 4 S without a batch, else the node share of the batch but never below S."""
    assert microbatches_for(3, 3, global_microbatches=None, total_nodes=None) == 12
    assert microbatches_for(2, 2, global_microbatches=10, total_nodes=3) == 7
    assert microbatches_for(8, 2, global_microbatches=10, total_nodes=8) == 8
