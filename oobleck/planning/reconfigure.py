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

import itertools
import logging
from collections.abc import Sequence
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

    Rules, in order: drop lost nodes keeping the survivors' order; fill pipelines below ``n0``
    with joined nodes, then by borrowing the largest pipeline's nodes while it stays >= ``n0``, then
    by merging short pipelines (a leftover joins the smallest pipeline); split the largest pipeline
    while fewer than ``f + 1`` remain and it has >= ``2 * n0`` nodes; remaining joined nodes form new
    pipelines if they reach ``n0``, else grow the smallest pipelines. Where a rule leaves a choice
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
        ReconfigurationError: fewer than ``n0`` nodes remain, every replica of a layer was lost, or
            the batch cannot be split over the new pipelines.
    """
    lost, joined = _validated_change(plan, lost_nodes, joined_nodes)
    by_size = {template.num_nodes: template for template in templates}
    smallest, largest = min(by_size), max(by_size)
    survivors = len(plan.nodes) - len(lost)
    if survivors + len(joined) < smallest:
        raise ReconfigurationError(
            f"{survivors} surviving + {len(joined)} joined nodes are fewer than the {smallest} nodes the "
            f"smallest pipeline needs; restart from a checkpoint with more nodes"
        )
    lost_set = set(lost)
    layer_bytes = LayerBytes.of(profile)
    old_ranges: dict[int, tuple[int, int]] = {}
    for pipeline in plan.pipelines:
        old_ranges.update(zip(pipeline.nodes, node_ranges(pipeline.template), strict=True))
    shaper = _Shaper(by_size, smallest, largest, layer_bytes, old_ranges)
    groups = [[node for node in pipeline.nodes if node not in lost_set] for pipeline in plan.pipelines]
    groups = [group for group in groups if group]
    spare = list(joined)
    for group in groups:
        while len(group) < smallest and spare:
            group.append(spare.pop(0))
    shaper.borrow(groups)
    groups = shaper.merge(groups)
    shaper.split(groups, plan.fault_tolerance + 1)
    shaper.join(groups, spare, plan.fault_tolerance + 1)
    new_plan = _build_plan(plan, groups, by_size, profile, hardware)
    transfers = plan_transfers(plan, new_plan, lost_set, layer_bytes)
    logger.info(
        "reconfigured: lost %s joined %s -> %d pipelines, %d transfers",
        list(lost),
        list(joined),
        len(new_plan.pipelines),
        len(transfers),
    )
    return Reconfiguration(plan=new_plan, transfers=transfers, lost_nodes=lost, joined_nodes=joined)


@dataclass
class _Shaper:
    """Applies the borrow / merge / split / join rules to lists of node ids, in place."""

    by_size: dict[int, PipelineTemplate]
    smallest: int
    largest: int
    layer_bytes: LayerBytes
    old_ranges: dict[int, tuple[int, int]]

    def cost(self, group: Sequence[int]) -> int:
        """Bytes the nodes of ``group`` must receive to play its template (0 without one)."""
        template = self.by_size.get(len(group))
        if template is None:
            return 0
        return sum(
            self.layer_bytes.missing(span, self.old_ranges.get(node))
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

    def merge(self, groups: list[list[int]]) -> list[list[int]]:
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
            merged[target] = self.cheapest([(merged[target] + pending,), (pending + merged[target],)])[0]
        return merged

    def split(self, groups: list[list[int]], wanted: int) -> None:
        while len(groups) < wanted:
            index = max(reversed(range(len(groups))), key=lambda i: len(groups[i]))
            group = groups[index]
            if len(group) < 2 * self.smallest:
                return
            cut = self.smallest
            head, tail = self.cheapest([(group[:-cut], group[-cut:]), (group[:cut], group[cut:])])
            groups[index : index + 1] = [head, tail]

    def join(self, groups: list[list[int]], spare: list[int], wanted: int) -> None:
        if len(spare) >= self.smallest:
            count = -(-len(spare) // self.largest)
            if len(groups) < wanted:
                count = max(count, min(wanted - len(groups), len(spare) // self.smallest))
            start = 0
            for index in range(count):
                size = len(spare) // count + (1 if index < len(spare) % count else 0)
                groups.append(spare[start : start + size])
                start += size
            return
        for node in spare:
            open_groups = [g for g in groups if len(g) < self.largest]
            if not open_groups:
                raise ReconfigurationError(
                    f"joined node {node} fits nowhere: every pipeline already has {self.largest} nodes, "
                    f"the largest template; generate templates for more nodes"
                )
            target = min(open_groups, key=len)
            target[:] = self.cheapest([([*target, node],), ([node, *target],)])[0]


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
    )
