"""The recovery model counts the groups and rounds the runtime really builds, with its settings."""

from __future__ import annotations

import random
from pathlib import Path

from oobleck.planning.groups import creation_rounds, plan_group_shape
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.planner import Planner
from oobleck.planning.profile import LayerProfile, ModelProfile
from oobleck.planning.recovery import RecoveryConstants, plan_ranks
from oobleck.runtime.control.master import MasterConfig
from oobleck.runtime.engine.topology import build_topology

_HARDWARE = HardwareSpec(
    name="tiny",
    gpus_per_node=1,
    gpu_memory_bytes=3_000,
    peak_flops=1e12,
    intra_node_bandwidth_bytes_per_s=1e9,
    inter_node_bandwidth_bytes_per_s=1e9,
)


def _profile(layers: int) -> ModelProfile:
    """Equal layers of 500 state bytes; the last is tied to the first (GPT-2 style)."""
    return ModelProfile(
        model="toy",
        config_fingerprint="toy",
        device="tiny",
        dtype="float32",
        microbatch_size=1,
        layers=tuple(
            LayerProfile(
                name=f"layer{i}",
                kind="embedding" if i == 0 else "head" if i == layers - 1 else "block",
                forward_s=1e-3,
                backward_s=2e-3,
                param_bytes=100,
                grad_bytes=100,
                optimizer_bytes=300,
                activation_bytes=10,
                output_bytes=10,
                tied_to=0 if i == layers - 1 else None,
            )
            for i in range(layers)
        ),
    )


def test_group_shape_equals_the_runtime_topology_on_planned_and_reconfigured_plans() -> None:
    """For real plans (and after random losses) the model's groups and rounds are the runtime's."""
    rng = random.Random(5)
    profile = _profile(12)
    planner = Planner(
        profile,
        _HARDWARE,
        fault_tolerance=1,
        global_microbatches=32,
        microbatch_size=1,
        max_nodes=24,
        max_gpus_per_stage=1,
    )
    tied = ((0, 11),)
    checked = 0
    for nodes in (8, 11, 17, 24):
        plan = planner.plan(list(range(nodes)))
        for _ in range(3):
            ranks = {node: i for i, node in enumerate(sorted(plan.nodes))}
            sets = build_topology(plan, ranks, num_layers=12, tied_pairs=tied).group_rank_sets()
            shape = plan_group_shape(plan, tied)
            assert shape.groups == len(sets)
            assert shape.rounds == len(creation_rounds(sets))
            assert shape.largest_members == max(map(len, sets), default=0)
            assert plan_ranks(plan) == len(ranks)
            checked += 1
            lost = rng.choice(plan.pipeline_nodes)
            plan = planner.reconfigure(plan, lost_nodes=[lost]).plan
    assert checked == 12


def test_default_detection_constants_are_the_runtime_heartbeat_settings() -> None:
    """Hang detection is the master's default heartbeat interval times its missed-beat count."""
    runtime = MasterConfig(run_dir=Path())
    constants = RecoveryConstants()
    assert constants.heartbeat_interval_s == runtime.heartbeat_interval_s
    assert constants.missed_heartbeats == runtime.missed_heartbeats
    assert constants.detect_s("hang") == runtime.heartbeat_interval_s * runtime.missed_heartbeats
