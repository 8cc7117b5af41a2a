"""Step time of a plan as a running job pays it: the cost model's step under calibrated constants.

The cost model (:mod:`oobleck.planning.cost`) prices a step from a profile measured one layer at a
time in one otherwise idle process and from a hardware spec's bandwidths. A running job pays more
(per-message latencies, optimizer update, Python and the collective library) and, on a test
cluster of local processes, its workers share one machine's cores. :class:`StepConstants` holds the
few constants that map the cost model onto a real job; the planner still *chooses* plans with the
profile's prices, these constants only say how long the chosen plan's steps take. Both backends
read them from here: the simulator charges ``StepConstants.step_s`` for every step and first step
after a recovery, and the notebooks fit them to measured runs (:mod:`oobleck.viz.step_model`).

Assumptions:
    * Compute and communication scale separately: every profiled forward and backward time by one
      factor, every link bandwidth by another.
    * On one machine of ``shared_cores`` cores, workers' CPU work per step adds up and spreads over
      the cores; a step then lasts the longer of the slowest pipeline's path and that total.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oobleck.errors import ConfigError
from oobleck.planning.cost import SendKind, plan_iteration_time_s, stage_latency_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Plan
from oobleck.planning.profile import ModelProfile
from oobleck.planning.validation import check_number, constants_from_mapping

_NO_COST = 1e12
"""A bandwidth scale that makes every transfer free: prices the compute part of a step alone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepConstants:
    """Cost-model constants of the step time; the defaults price a plan exactly as the planner did.

    With separate machines a step is the cost model's own formula (1F1B time of the slowest pipeline
    plus the gradient all-reduce) with every profiled compute time times ``compute_scale`` and every
    link bandwidth times ``bandwidth_scale``, plus ``step_overhead_s``.

    When every node is a worker process on one machine of ``shared_cores`` cores (the local test
    cluster), workers also wait for a core: worker ``w`` needs ``W_w = compute_scale * (its
    microbatches x its layers' profiled compute) + step_overhead_s`` CPU seconds per step and the
    step takes ``max(critical path, sum_w W_w / shared_cores)``. Losing a node removes one
    worker's ``step_overhead_s`` from the machine while the microbatch work stays (the global batch
    is fixed), so on an oversubscribed machine the step gets *faster* after a loss.
    """

    compute_scale: float = 1.0
    """Compute time in the running job over the profiled compute time (1: the profile is right)."""
    bandwidth_scale: float = 1.0
    """Effective bandwidth in the running job over the hardware spec's (latency included)."""
    step_overhead_s: float = 0.0
    """CPU seconds every worker spends per step outside its microbatches' forward and backward
    (optimizer update, gradient all-reduce, Python and the collective library)."""
    shared_cores: int | None = None
    """Cores all workers share when they are processes of one machine; ``None``: separate machines."""

    def __post_init__(self) -> None:
        # NOTE: a fit may put all of a tiny model's step into the overhead (compute scale 0); a
        # bandwidth scale of 0 would make every transfer take forever.
        check_number("compute_scale", self.compute_scale, positive=False, source="costs")
        check_number("bandwidth_scale", self.bandwidth_scale, positive=True, source="costs")
        check_number("step_overhead_s", self.step_overhead_s, positive=False, source="costs")
        cores = self.shared_cores
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
            raise ConfigError(f"costs: shared_cores must be an integer >= 1 or null, got {cores!r}")

    def step_s(self, plan: Plan, profile: ModelProfile, hardware: HardwareSpec) -> float:
        """The step time of ``plan``'s pipelines under these constants (see the class docstring).

        At unit scales the critical path is ``plan.iteration_time_s``, the planner's own price,
        which repricing reproduces to the bit; it is taken as is, because the simulator asks on
        every cluster event, for plans with thousands of stages.
        """
        if (self.compute_scale, self.bandwidth_scale) == (1.0, 1.0):
            critical = plan.iteration_time_s
        else:
            critical = repriced_step_s(plan, profile, hardware, self.compute_scale, self.bandwidth_scale)
        critical += self.step_overhead_s
        if self.shared_cores is None:
            return critical
        compute, workers = worker_work(plan, profile, hardware)
        machine = (self.compute_scale * compute + workers * self.step_overhead_s) / self.shared_cores
        return max(critical, machine)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "costs") -> StepConstants:
        """Build from a mapping; missing keys keep their defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        expected = "an object of step constants"
        return constants_from_mapping(cls, data, source=source, expected=expected, prefix="costs: ")


def worker_work(plan: Plan, profile: ModelProfile, hardware: HardwareSpec) -> tuple[float, int]:
    """Profiled compute seconds of one step summed over all workers, and the number of workers.

    A stage on ``g`` devices is ``g`` workers, each running every microbatch of its pipeline
    through the stage's layers at the tensor-parallel speed-up of ``g``.

    Args:
        plan: A plan (its stages and microbatch counts).
        profile: The profile it was planned with.
        hardware: Supplies the tensor-parallel speed-up.

    Returns:
        ``(compute seconds at scale 1, workers)``.
    """
    compute, workers = 0.0, 0
    for pipeline in plan.pipelines:
        for stage in pipeline.template.stages:
            latency = stage_latency_s(
                profile, hardware, stage.first_layer, stage.end_layer, stage.gpus, "none"
            )
            compute += stage.gpus * pipeline.microbatches * latency
            workers += stage.gpus
    return compute, workers


def scaled_profile(profile: ModelProfile, compute_scale: float) -> ModelProfile:
    """``profile`` with every layer's forward and backward time multiplied by ``compute_scale``."""
    return dataclasses.replace(
        profile,
        layers=tuple(
            dataclasses.replace(
                layer, forward_s=layer.forward_s * compute_scale, backward_s=layer.backward_s * compute_scale
            )
            for layer in profile.layers
        ),
    )


def repriced_step_s(
    plan: Plan, profile: ModelProfile, hardware: HardwareSpec, compute_scale: float, bandwidth_scale: float
) -> float:
    """Step time of ``plan``'s pipelines (same stages, same batch split) under scaled costs.

    Args:
        plan: A plan (its stages and microbatch counts are kept).
        profile: The profile it was planned with.
        hardware: The hardware it was planned for.
        compute_scale: Factor on every layer's forward and backward time.
        bandwidth_scale: Factor on the intra- and inter-node bandwidths.

    Returns:
        Seconds: the slowest pipeline's 1F1B time plus the gradient all-reduce.
    """
    scaled = scaled_profile(profile, compute_scale)
    links = dataclasses.replace(
        hardware,
        intra_node_bandwidth_bytes_per_s=hardware.intra_node_bandwidth_bytes_per_s * bandwidth_scale,
        inter_node_bandwidth_bytes_per_s=hardware.inter_node_bandwidth_bytes_per_s * bandwidth_scale,
    )
    pipelines = []
    for pipeline in plan.pipelines:
        stages = pipeline.template.stages
        repriced = []
        for index, stage in enumerate(stages):
            send: SendKind = (
                "none"
                if index == len(stages) - 1
                else "intra"
                if stages[index + 1].node == stage.node
                else "inter"
            )
            latency = stage_latency_s(scaled, links, stage.first_layer, stage.end_layer, stage.gpus, send)
            repriced.append(dataclasses.replace(stage, latency_s=latency))
        template = dataclasses.replace(pipeline.template, stages=tuple(repriced))
        pipelines.append(dataclasses.replace(pipeline, template=template))
    return plan_iteration_time_s(pipelines, scaled, links)


def step_parts_s(plan: Plan, profile: ModelProfile, hardware: HardwareSpec) -> tuple[float, float]:
    """The compute and the communication part of ``plan``'s step as the cost model prices it.

    The step is linear in the two parts' factors (compute scale, inverse bandwidth scale), which is
    what lets a least-squares fit find them.

    Args:
        plan: A plan.
        profile: The profile it was planned with.
        hardware: The hardware it was planned for.

    Returns:
        ``(compute seconds, communication seconds)``, both at scale 1; they sum to the step time.
    """
    compute = repriced_step_s(plan, profile, hardware, 1.0, _NO_COST)
    return compute, repriced_step_s(plan, profile, hardware, 1.0, 1.0) - compute
