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

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.errors import ConfigError, PlanningError, ReconfigurationError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Transfer
from oobleck.planning.profile import ModelProfile
from oobleck.planning.transfer import LayerBytes, node_ranges, plan_transfers

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
    lost, joined = _validated_change(plan, lost_nodes, joined_nodes)
    by_size = {template.num_nodes: template for template in templates}
    smallest = min(by_size)
    survivors = len(plan.nodes) - len(lost)
    if survivors + len(joined) < smallest:
        raise ReconfigurationError(
            f"{survivors} surviving + {len(joined)} joined nodes are fewer than the {smallest} nodes the "
            f"smallest pipeline needs; restart from a checkpoint with more nodes"
        )
    layer_bytes = LayerBytes.of(profile)
    new_plan = full_replan(plan, lost, joined, by_size, profile, hardware)
    transfers = plan_transfers(plan, new_plan, set(lost), layer_bytes)
    logger.info(
        "reconfigured: lost %s joined %s -> %d pipelines, %d spares, %d transfers",
        list(lost),
        list(joined),
        len(new_plan.pipelines),
        len(new_plan.spare_nodes),
        len(transfers),
    )
    return Reconfiguration(plan=new_plan, transfers=transfers, lost_nodes=lost, joined_nodes=joined)


def full_replan(
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
    shaper = _Shaper(by_size, min(by_size), max(by_size), LayerBytes.of(profile), old_ranges.get)
    spares = [node for node in plan.spare_nodes if node not in lost_set]
    groups = [take_spares(pipeline.nodes, lost_set, spares) for pipeline in plan.pipelines]
    groups = [group for group in groups if group]
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


def take_spares(nodes: Sequence[int], lost: set[int], spares: list[int]) -> list[int]:
    """A pipeline's surviving nodes, each lost one replaced in place by the lowest spare (in place).

    Spares are taken in pipeline order, then position order, so the first failures are absorbed
    without changing any template: the pipeline keeps its shape and only the spare receives state.
    """
    group = list(nodes)
    if lost.isdisjoint(group):
        return group
    for position, node in enumerate(group):
        if node in lost and spares:
            group[position] = spares.pop(0)
    return [node for node in group if node not in lost]


@dataclass
class _Shaper:
    """Applies the borrow / merge / split / join rules to lists of node ids, in place."""

    by_size: dict[int, PipelineTemplate]
    smallest: int
    largest: int
    layer_bytes: LayerBytes
    old_range: Callable[[int], tuple[int, int] | None]
    """A node's layer range in the plan in force (None: it held none)."""

    def cost(self, group: Sequence[int]) -> int:
        """Bytes the nodes of ``group`` must receive to play its template (0 without one)."""
        template = self.by_size.get(len(group))
        if template is None:
            return 0
        return sum(
            self.layer_bytes.missing(span, self.old_range(node))
            for node, span in zip(group, node_ranges(template), strict=True)
        )

    def cheapest(self, options: Sequence[tuple[list[int], ...]]) -> tuple[list[int], ...]:
        """The option whose groups need the fewest bytes; ties go to the earliest option."""
        return min(options, key=lambda option: sum(self.cost(group) for group in option))

    def borrow(self, groups: list[list[int]]) -> None:
        for receiver in groups:
            while len(receiver) < self.smallest:
                donors = [g for g in groups if g is not receiver and len(g) > self.smallest]
                if not donors:
                    break
                # NOTE: the largest donor; among equals the later one, as the original does.
                donor = max(reversed(donors), key=len)
                give = min(self.smallest - len(receiver), len(donor) - self.smallest)
                keep_tail, keep_head = donor[: len(donor) - give], donor[give:]
                last, first = donor[len(donor) - give :], donor[:give]
                new_receiver, new_donor = self.cheapest(
                    [
                        (receiver + last, keep_tail),
                        (last + receiver, keep_tail),
                        (receiver + first, keep_head),
                        (first + receiver, keep_head),
                    ]
                )
                receiver[:], donor[:] = new_receiver, new_donor

    def merge(self, groups: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """Short groups merged in order; a leftover joins the smallest pipeline.

        Returns the groups and the nodes left idle: a leftover that would make its pipeline larger
        than the largest template stays idle as spares instead (a valid plan without them exists).
        """
        merged: list[list[int]] = []
        pending: list[int] = []
        for group in groups:
            if len(group) >= self.smallest:
                merged.append(group)
                continue
            pending = self.cheapest([(pending + group,), (group + pending,)])[0] if pending else group
            if len(pending) >= self.smallest:
                merged.append(pending)
                pending = []
        if pending:
            if not merged:
                raise ReconfigurationError(
                    f"only {len(pending)} nodes remain, the smallest pipeline needs {self.smallest}"
                )
            # NOTE: the leftover joins the smallest pipeline; among equals the later one.
            target = max(reversed(range(len(merged))), key=lambda i: -len(merged[i]))
            if len(merged[target]) + len(pending) > self.largest:
                return merged, pending
            merged[target] = self.cheapest([(merged[target] + pending,), (pending + merged[target],)])[0]
        return merged, []

    def split(self, groups: list[list[int]], wanted: int) -> None:
        while len(groups) < wanted:
            index = max(reversed(range(len(groups))), key=lambda i: len(groups[i]))
            group = groups[index]
            if len(group) < 2 * self.smallest:
                return
            cut = self.smallest
            head, tail = self.cheapest([(group[:-cut], group[-cut:]), (group[:cut], group[cut:])])
            groups[index : index + 1] = [head, tail]

    def join(self, groups: list[list[int]], spare: list[int], wanted: int) -> list[int]:
        """Joined nodes form new pipelines or grow the smallest; returns those that fit nowhere."""
        if len(spare) >= self.smallest:
            count = -(-len(spare) // self.largest)
            if len(groups) < wanted:
                count = max(count, min(wanted - len(groups), len(spare) // self.smallest))
            start = 0
            for index in range(count):
                size = len(spare) // count + (1 if index < len(spare) % count else 0)
                groups.append(spare[start : start + size])
                start += size
            return []
        idle = []
        for node in spare:
            open_groups = [g for g in groups if len(g) < self.largest]
            if not open_groups:
                # NOTE: every pipeline already has the largest template's size: a spare.
                idle.append(node)
                continue
            target = min(open_groups, key=len)
            target[:] = self.cheapest([([*target, node],), ([node, *target],)])[0]
        return idle


def _validated_change(
    plan: Plan, lost_nodes: Sequence[int], joined_nodes: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    members = set(plan.nodes)
    lost = tuple(sorted(int(node) for node in lost_nodes))
    joined = tuple(sorted(int(node) for node in joined_nodes))
    for name, nodes in (("lost_nodes", lost), ("joined_nodes", joined)):
        for a, b in itertools.pairwise(nodes):
            if a == b:
                raise ConfigError(f"{name}: node {a} is listed twice; list each node once")
    for node in lost:
        if node not in members:
            raise ConfigError(
                f"lost_nodes: node {node} is not in the plan (members: {min(members)}..{max(members)}, "
                f"{len(members)} nodes); pass only plan members"
            )
    for node in joined:
        if node in members:
            raise ConfigError(f"joined_nodes: node {node} is already in the plan; pass only new nodes")
    return lost, joined


def _build_plan(
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
