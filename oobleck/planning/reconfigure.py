"""Turn a plan plus lost and joined nodes into a new plan and the layer copies it needs.

Nothing is planned from scratch: pipelines keep their surviving nodes and are re-mapped onto
ready templates (shrink; borrow from the largest pipeline; merge short ones; split or add pipelines
to keep ``f + 1``; grow with joined nodes), then the batch is re-split. Re-running instantiation
would often be faster per step but would move far more state; recovery time matters more.

Assumptions:
    * One template per node count ``n0 .. n_max`` (``generate_templates``); ``n0`` is the smallest.
    * A node's layers form one contiguous range (its stages are consecutive in the pipeline).
    * Every choice scans pipelines and nodes in list order, so equal inputs give equal outputs.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.errors import ConfigError, PlanningError, ReconfigurationError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.index import attach, take_index
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Transfer
from oobleck.planning.profile import ModelProfile
from oobleck.planning.replan import IndexHolders, incremental_replan
from oobleck.planning.rules import Shaper, take_spares
from oobleck.planning.transfer import (
    LayerBytes,
    assign_transfers,
    node_ranges,
    pipeline_demands,
    plan_transfers,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconfiguration:
    """The outcome of one recovery decision: new plan and the state copies that lead to it."""

    plan: Plan
    transfers: tuple[Transfer, ...]
    """Layer copies ``(layer, src, dst, bytes)``; sources are surviving holders in the old plan."""
    lost_nodes: tuple[int, ...]
    joined_nodes: tuple[int, ...]

    @property
    def tolerated_failures(self) -> int:
        """Failures the new plan survives: pipelines - 1 (below ``f`` when nodes ran short)."""
        return len(self.plan.pipelines) - 1

    @property
    def transfer_bytes(self) -> int:
        return sum(transfer.bytes for transfer in self.transfers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "transfers": [transfer.to_dict() for transfer in self.transfers],
            "lost_nodes": list(self.lost_nodes),
            "joined_nodes": list(self.joined_nodes),
            "tolerated_failures": self.tolerated_failures,
        }


def reconfigure(
    plan: Plan,
    *,
    lost_nodes: Sequence[int] = (),
    joined_nodes: Sequence[int] = (),
    templates: Sequence[PipelineTemplate],
    profile: ModelProfile,
    hardware: HardwareSpec,
) -> Reconfiguration:
    """Re-plan after nodes are lost and/or join, moving as little state as the rules allow.

    Rules, in order: the plan's spare nodes take the places of lost nodes (pipeline order, then
    position; a failure absorbed so changes no template and moves no other pipeline's layers);
    drop the remaining lost nodes keeping the survivors' order; fill pipelines below ``n0``
    with joined nodes, then by borrowing the largest pipeline's nodes while it stays >= ``n0``, then
    by merging short pipelines (a leftover joins the smallest pipeline); split the largest pipeline
    while fewer than ``f + 1`` remain and it has >= ``2 * n0`` nodes; remaining joined nodes form new
    pipelines if they reach ``n0``, else grow the smallest pipelines. Nodes no rule can use stay
    idle as spares: joined nodes when the plan already had spares (it was planned with idle nodes
    because more nodes do not help), a joined node when every pipeline has the largest template's
    size or when with it the batch cannot be split, a merge leftover that would exceed the largest
    template. Where a rule leaves a choice
    (which end of a donor, which order inside a merged pipeline), the one that copies fewer bytes
    wins, ties to the listed order. Called once per membership change, on every node alike.

    Args:
        plan: The plan in force.
        lost_nodes: Nodes that failed or left (members of ``plan``).
        joined_nodes: New nodes (not members of ``plan``).
        templates: One template per node count, as used to build ``plan``.
        profile: Layer costs (transfer bytes, step time).
        hardware: Node type (step time).

    Returns:
        The new plan, the layer copies and the membership change.

    Raises:
        ConfigError: a lost node is unknown or repeated, or a joined node is repeated or a member.
        ReconfigurationError: no valid plan exists: fewer than ``n0`` nodes remain, every replica
            of a layer was lost, or the batch cannot be split over the surviving pipelines (more
            stages than microbatches). Any number of simultaneous losses is reconfigured otherwise.
    """
    by_size = {template.num_nodes: template for template in templates}
    smallest = min(by_size)
    layer_bytes = LayerBytes.of(profile)
    index = take_index(plan)
    try:
        # NOTE: membership through the index (O(log N) per node), not ``plan.nodes``: a re-planned
        # plan's member list is built only when read, and a re-plan must not read it.
        lost, joined = _validated_change(plan, index.key_of_node, lost_nodes, joined_nodes)
        survivors = len(index.key_of_node) + len(plan.spare_nodes) - len(lost)
        if survivors + len(joined) < smallest:
            raise ReconfigurationError(
                f"{survivors} surviving + {len(joined)} joined nodes are fewer than the {smallest} nodes "
                f"the smallest pipeline needs; restart from a checkpoint with more nodes"
            )
        shaper = Shaper(by_size, smallest, max(by_size), layer_bytes, index.old_range)
        incremental = incremental_replan(plan, index, lost, joined, by_size, profile, hardware, shaper)
        if incremental is None:
            new_plan = full_replan(plan, lost, joined, by_size, profile, hardware)
            transfers = plan_transfers(plan, new_plan, set(lost), layer_bytes)
        else:
            new_plan, edits, touched = incremental
            demands = pipeline_demands(touched, index.old_range)
            transfers = assign_transfers(demands, IndexHolders(index, plan, set(lost)), layer_bytes)
            attach(new_plan, index, index.commit(edits))
    finally:
        index.lock.release()
    logger.info(
        "reconfigured: lost %s joined %s -> %d pipelines, %d spares, %d transfers",
        list(lost),
        list(joined),
        len(new_plan.pipelines),
        len(new_plan.spare_nodes),
        len(transfers),
    )
    return Reconfiguration(plan=new_plan, transfers=transfers, lost_nodes=lost, joined_nodes=joined)


def full_replan(  # noqa: PLR0917 - the inputs of reconfigure, validated; the tests call it directly
    plan: Plan,
    lost: Sequence[int],
    joined: Sequence[int],
    by_size: dict[int, PipelineTemplate],
    profile: ModelProfile,
    hardware: HardwareSpec,
) -> Plan:
    """The rules of :func:`reconfigure` applied to every pipeline of ``plan`` (O(nodes)).

    The reference the incremental re-plan must agree with, and its fallback where it does not
    apply. ``lost`` and ``joined`` are validated and sorted.
    """
    lost_set = set(lost)
    old_ranges: dict[int, tuple[int, int]] = {}
    for pipeline in plan.pipelines:
        old_ranges.update(zip(pipeline.nodes, node_ranges(pipeline.template), strict=True))
    shaper = Shaper(by_size, min(by_size), max(by_size), LayerBytes.of(profile), old_ranges.get)
    spares = [node for node in plan.spare_nodes if node not in lost_set]
    groups = [take_spares(pipeline.nodes, lost_set, spares) for pipeline in plan.pipelines]
    groups = [group for group in groups if group]
    if not groups:
        raise ReconfigurationError(
            "every pipeline lost all its nodes, so every layer lost every replica; restore from a checkpoint"
        )
    # NOTE: a plan that leaves nodes idle was planned so because more nodes do not help; joined
    # nodes then wait as spares too (a fresh plan() on all nodes may re-decide).
    incoming = [] if plan.spare_nodes else list(joined)
    idle = [*spares, *joined] if plan.spare_nodes else spares
    for group in groups:
        while len(group) < shaper.smallest and incoming:
            group.append(incoming.pop(0))
    shaper.borrow(groups)
    groups, leftover = shaper.merge(groups)
    shaper.split(groups, plan.fault_tolerance + 1)
    idle.extend(leftover)
    idle.extend(shaper.join(groups, incoming, plan.fault_tolerance + 1))
    try:
        return _build_plan(plan, groups, tuple(sorted(idle)), by_size, profile, hardware)
    except ReconfigurationError:
        if not incoming:
            raise
    # NOTE: the joined nodes made the batch unsplittable (more stages than microbatches): without
    # them the plan is the loss-only one, and they wait as spares.
    shrunk = full_replan(plan, lost, (), by_size, profile, hardware)
    return dataclasses.replace(shrunk, spare_nodes=tuple(sorted([*shrunk.spare_nodes, *joined])))


def _validated_change(
    plan: Plan, placed: dict[int, int], lost_nodes: Sequence[int], joined_nodes: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sorted ``lost`` and ``joined``, checked against the members (``placed``: pipeline nodes)."""
    spares = plan.spare_nodes
    lost = tuple(sorted(int(node) for node in lost_nodes))
    joined = tuple(sorted(int(node) for node in joined_nodes))
    for name, nodes in (("lost_nodes", lost), ("joined_nodes", joined)):
        for a, b in itertools.pairwise(nodes):
            if a == b:
                raise ConfigError(f"{name}: node {a} is listed twice; list each node once")
    for node in lost:
        if node not in placed and not _is_member(spares, node):
            members = plan.nodes
            raise ConfigError(
                f"lost_nodes: node {node} is not in the plan (members: {min(members)}..{max(members)}, "
                f"{len(members)} nodes); pass only plan members"
            )
    for node in joined:
        if node in placed or _is_member(spares, node):
            raise ConfigError(f"joined_nodes: node {node} is already in the plan; pass only new nodes")
    return lost, joined


def _is_member(members: tuple[int, ...], node: int) -> bool:
    """Whether ``node`` is in the sorted ``members`` (O(log N): no set of every member per change)."""
    position = bisect.bisect_left(members, node)
    return position < len(members) and members[position] == node


def _build_plan(  # noqa: PLR0917 - a private step of full_replan with its inputs
    old: Plan,
    groups: list[list[int]],
    spare_nodes: tuple[int, ...],
    by_size: dict[int, PipelineTemplate],
    profile: ModelProfile,
    hardware: HardwareSpec,
) -> Plan:
    for group in groups:
        if len(group) not in by_size:
            raise ReconfigurationError(
                f"a pipeline of {len(group)} nodes has no template (templates cover "
                f"{min(by_size)}..{max(by_size)} nodes); generate templates up to {len(group)} nodes"
            )
    chosen = [by_size[len(group)] for group in groups]
    try:
        microbatches = distribute_batch(chosen, old.global_microbatches)
    except PlanningError as error:
        raise ReconfigurationError(f"cannot split the batch after reconfiguration: {error}") from None
    pipelines = [
        Pipeline(template=template, nodes=tuple(group), microbatches=count)
        for template, group, count in zip(chosen, groups, microbatches, strict=True)
    ]
    return Plan(
        pipelines=tuple(pipelines),
        global_microbatches=old.global_microbatches,
        microbatch_size=old.microbatch_size,
        fault_tolerance=old.fault_tolerance,
        iteration_time_s=plan_iteration_time_s(pipelines, profile, hardware),
        spare_nodes=spare_nodes,
    )
