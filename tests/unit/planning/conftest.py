"""Shared planning-test data: a two-device node type and a two-pipeline plan of four layers."""

from __future__ import annotations

import pytest

from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage


@pytest.fixture
def two_device_hardware() -> HardwareSpec:
    """Two devices per node, 4000 B/s inside a node, 1000 B/s between nodes, 50 % TP efficiency."""
    return HardwareSpec(
        name="test",
        gpus_per_node=2,
        gpu_memory_bytes=1 << 30,
        peak_flops=1e12,
        intra_node_bandwidth_bytes_per_s=4000.0,
        inter_node_bandwidth_bytes_per_s=1000.0,
        tensor_parallel_efficiency=0.5,
    )


@pytest.fixture
def two_pipeline_plan() -> Plan:
    """Two pipelines with different stage boundaries on nodes 0-1 and 2."""
    pipelines = (
        Pipeline(template=_two_stage_template(), nodes=(0, 1), microbatches=4),
        Pipeline(template=_one_stage_template(), nodes=(2,), microbatches=2),
    )
    return Plan(
        pipelines=pipelines,
        global_microbatches=6,
        microbatch_size=1,
        fault_tolerance=1,
        iteration_time_s=12.5,
    )


def _two_stage_template() -> PipelineTemplate:
    """Layers 0-1 on node 0 and layers 2-3 on node 1, one device each, latencies 2 s and 3 s."""
    stages = (
        Stage(first_layer=0, end_layer=2, node=0, gpus=1, latency_s=2.0, memory_bytes=0),
        Stage(first_layer=2, end_layer=4, node=1, gpus=1, latency_s=3.0, memory_bytes=0),
    )
    return PipelineTemplate(num_nodes=2, gpus_per_node=2, stages=stages)


def _one_stage_template() -> PipelineTemplate:
    """All four layers on two devices of one node."""
    stage = Stage(first_layer=0, end_layer=4, node=0, gpus=2, latency_s=4.0, memory_bytes=0)
    return PipelineTemplate(num_nodes=1, gpus_per_node=2, stages=(stage,))
