"""The baselines' lazy homogeneous plans are the plans they stand for, pipeline by pipeline."""

from __future__ import annotations

import pickle

from oobleck.planning.batch import distribute_batch
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.plan import Pipeline, Plan
from oobleck.planning.planner import Planner
from oobleck.sim import SimulationConfig
from oobleck.sim.base import JobContext
from oobleck.sim.costs import checkpoint_bytes
from oobleck.sim.policies.homogeneous import HomogeneousPlan, HomogeneousPlanner


def _homogeneous(config: SimulationConfig) -> HomogeneousPlanner:
    hardware = get_hardware(config.hardware)
    profile = resolve_profile(config.model, hardware, microbatch_size=config.microbatch_size)
    planner = Planner(
        profile,
        hardware,
        fault_tolerance=config.fault_tolerance,
        global_microbatches=config.global_microbatches,
        microbatch_size=config.microbatch_size,
        max_nodes=config.nodes,
    )
    context = JobContext(
        profile=profile,
        hardware=hardware,
        planner=planner,
        costs=config.costs,
        node_fail_rate_per_s=0.0,
        fault_tolerance=config.fault_tolerance,
        global_microbatches=config.global_microbatches,
        microbatch_size=config.microbatch_size,
        checkpoint_bytes=checkpoint_bytes(profile),
    )
    return HomogeneousPlanner(context)


def test_lazy_plan_equals_the_eager_plan_on_the_lowest_ids(small_config: SimulationConfig) -> None:
    """Every depth's lazy plan on 15 scattered ids has the pipelines, counts and nodes of the plan
    built eagerly (and validated) from the same chunks, one pipeline or all, also after pickling."""
    homogeneous = _homogeneous(small_config)
    nodes = tuple(range(0, 30, 2))
    for depth in homogeneous.depths:
        if homogeneous.width(depth, len(nodes)) < 1:
            continue
        plan = homogeneous.plan(nodes, depth)
        assert isinstance(plan, HomogeneousPlan)
        template = homogeneous.templates[depth]
        width = homogeneous.width(depth, len(nodes))
        counts = distribute_batch([template] * width, small_config.global_microbatches)
        eager = Plan(
            pipelines=tuple(
                Pipeline(template=template, nodes=nodes[i * depth : (i + 1) * depth], microbatches=count)
                for i, count in enumerate(counts)
            ),
            global_microbatches=small_config.global_microbatches,
            microbatch_size=small_config.microbatch_size,
            fault_tolerance=0,
            iteration_time_s=plan.iteration_time_s,
        )
        assert plan.pipeline(width - 1) == eager.pipelines[-1]
        assert plan.template_counts == eager.template_counts == ((template, width),)
        assert plan.nodes == eager.nodes == nodes[: depth * width]
        assert plan.pipelines == eager.pipelines
        assert plan.to_dict() == eager.to_dict()
        restored = pickle.loads(pickle.dumps(plan))
        assert restored.pipelines == eager.pipelines and restored.pipeline(0) == eager.pipelines[0]
