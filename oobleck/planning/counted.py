"""The first plan of hand-written templates with pinned pipeline counts (``pipelines[i].count``).

A researcher reproducing a heterogeneous layout, or the original's explicit template
instantiation, states how many pipelines of each template to run. The planner's own rule
(:mod:`~oobleck.planning.instantiate`: minimise the makespan) would not pick most such layouts:
a node that holds the model is always fastest as its own pipeline, so it never mixes a 1-node
template with larger ones.

Assumptions:
    * The templates come from :func:`~oobleck.planning.manual_templates.manual_templates` (one per
      node count, each checked against the model and the hardware).
    * Counts pin the first plan (and a restart plan that fits) only; recovery re-plans with
      :func:`~oobleck.planning.reconfigure.reconfigure` over the same templates, unconstrained.
"""

from __future__ import annotations

from collections.abc import Sequence

from oobleck.errors import ConfigError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan
from oobleck.planning.profile import ModelProfile


def counted_plan(
    templates: Sequence[PipelineTemplate],
    counts: Sequence[int],
    node_ids: Sequence[int],
    *,
    fault_tolerance: int,
    global_microbatches: int,
    microbatch_size: int,
    profile: ModelProfile,
    hardware: HardwareSpec,
    path: str = "pipelines",
) -> Plan:
    """The plan with exactly ``counts[i]`` pipelines of ``templates[i]`` (the job's ``count`` keys).

    Rules: the pipelines must fit the nodes (``sum(count x nodes) <= len(node_ids)``; the rest are
    the plan's ``spare_nodes``), keep ``f + 1`` replicas (``sum(count) >= f + 1``) and be fed by the
    batch, which 1F1B needs at one microbatch per stage (``sum(count x stages) <= B``, stricter than
    one per pipeline). The batch split is the planner's (:func:`distribute_batch`). Pipelines are
    ordered by template size, smallest first, on contiguous runs of the sorted node ids, lowest
    first: the order :func:`~oobleck.planning.instantiate.instantiate` produces, so counts that
    equal the planner's own choice give the very plan it would, and every worker gets the same one.

    Args:
        templates: The manual templates, in ``pipelines:`` order (for messages).
        counts: Pipelines per template, ``>= 0``, parallel to ``templates``.
        node_ids: The nodes available; any order, no duplicates.
        fault_tolerance: ``f``.
        global_microbatches: ``B``.
        microbatch_size: Samples per microbatch (recorded in the plan).
        profile: The model profile (for the plan's step time).
        hardware: The node type (same).
        path: Key path for messages.

    Returns:
        The plan; its pipelines run the planner's batch split.

    Raises:
        ConfigError: Duplicate node ids, or counts that do not fit (one line: the rule, the
            numbers and the fix).
    """
    nodes = tuple(sorted(node_ids))
    if len(set(nodes)) != len(nodes):
        raise ConfigError("node_ids: a node is listed more than once; list each node once")
    pairs = sorted(zip(templates, counts, strict=True), key=lambda pair: pair[0].num_nodes)
    needed = sum(template.num_nodes * count for template, count in pairs)
    pipelines_wanted = sum(counts)
    if needed > len(nodes):
        terms = " + ".join(f"{count} x {template.num_nodes}" for template, count in pairs if count)
        raise ConfigError(
            f"{path}: count {list(counts)} needs {terms} = {needed} nodes, the job has {len(nodes)}; "
            f"lower a count or add {needed - len(nodes)} nodes"
        )
    if pipelines_wanted < fault_tolerance + 1:
        raise ConfigError(
            f"{path}: count {list(counts)} gives {pipelines_wanted} pipelines, fault_tolerance="
            f"{fault_tolerance} needs >= {fault_tolerance + 1}; raise a count or lower fault_tolerance"
        )
    stages = sum(template.num_stages * count for template, count in pairs)
    if stages > global_microbatches:
        raise ConfigError(
            f"{path}: count {list(counts)} gives {pipelines_wanted} pipelines of {stages} stages in all, "
            f"the global batch has {global_microbatches} microbatches and 1F1B needs one per stage; "
            f"lower a count or raise global_batch to >= {stages * microbatch_size}"
        )
    chosen = [template for template, count in pairs for _ in range(count)]
    pipelines = []
    start = 0
    for template, share in zip(chosen, distribute_batch(chosen, global_microbatches), strict=True):
        pipelines.append(
            Pipeline(template=template, nodes=nodes[start : start + template.num_nodes], microbatches=share)
        )
        start += template.num_nodes
    return Plan(
        pipelines=tuple(pipelines),
        spare_nodes=nodes[start:],
        global_microbatches=global_microbatches,
        microbatch_size=microbatch_size,
        fault_tolerance=fault_tolerance,
        iteration_time_s=plan_iteration_time_s(pipelines, profile, hardware),
    )
