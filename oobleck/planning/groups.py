"""Process groups of a plan and the rounds in which the runtime creates them.

The runtime builds one data-parallel group per distinct tuple of layer holders and one per tied
weight whose holders differ from every layer's (``runtime/engine/topology.py``); pipeline
neighbours talk on the default group and get no group of their own. Creating a group waits only
for its members (a non-member's ``new_group`` call returns at once), so a rank waits for the
members of its own groups, who may in turn wait for theirs. Created in the topology's order, the
groups of a heterogeneous plan form chains as long as the whole list (layer ``l``'s group shares a
rank with layer ``l + 1``'s). The schedule here puts the groups into rounds of pairwise disjoint
groups and every rank creates them in round order: the groups of one round are created at the same
time, and a rebuild lasts as many group creations as there are rounds.

Assumptions:
    * Every rank computes the same ordered list of rank sets (the topology is a pure function of
      the plan), so every rank derives the same rounds; a rank follows the global round order
      restricted to its own groups, which cannot deadlock (a global order has no cycle).
    * Groups are listed by their first layer, so the groups of one rank (one stage: a contiguous
      layer range) are consecutive; first-fit then needs exactly as many rounds as the busiest rank
      has groups (an interval graph), the fewest any schedule can have. A tied-weight group can add
      one round.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from oobleck.planning.plan import Plan

M = TypeVar("M", bound=Hashable)


def creation_rounds(member_sets: Sequence[Collection[M]]) -> tuple[tuple[int, ...], ...]:
    """Rounds of pairwise disjoint groups, first-fit in the given order.

    Each group goes into the earliest round in which none of its members is busy with another
    group. Duplicate sets are scheduled once (their first occurrence).

    Args:
        member_sets: The members (ranks, or any hashable stand-in) of each group, in the order every
            rank lists them.

    Returns:
        Per round, the indices into ``member_sets`` of its groups, ascending; rounds in order.
    """
    busy: list[set[M]] = []
    rounds: list[list[int]] = []
    seen: set[frozenset[M]] = set()
    for index, members in enumerate(member_sets):
        key = frozenset(members)
        if key in seen:
            continue
        seen.add(key)
        slot = next((r for r, used in enumerate(busy) if used.isdisjoint(key)), len(busy))
        if slot == len(busy):
            busy.append(set())
            rounds.append([])
        busy[slot] |= key
        rounds[slot].append(index)
    return tuple(tuple(members) for members in rounds)


def sequential_depth(member_sets: Sequence[Collection[M]]) -> int:
    """Group creations on the critical path when every rank creates its groups in list order.

    A group starts once each member has created its earlier groups; this is the rebuild's depth
    before :func:`creation_rounds` reordered them (the old one-after-another creation).

    Args:
        member_sets: The members of each group, in list order.

    Returns:
        The longest chain of groups that share a member, in list order.
    """
    done: dict[M, int] = {}
    depth = 0
    for members in member_sets:
        level = 1 + max((done.get(member, 0) for member in members), default=0)
        for member in members:
            done[member] = level
        depth = max(depth, level)
    return depth


@dataclass(frozen=True, slots=True)
class GroupShape:
    """How many process groups a plan needs, and how long a chain of them a rebuild waits for."""

    groups: int
    """Distinct rank sets of more than one member (one group each)."""
    rounds: int
    """Rounds of :func:`creation_rounds`: group creations on the critical path of a rebuild."""
    largest_members: int
    """Members of the largest group (0 without groups)."""


_Member = tuple[int, int]
"""A stand-in for the ranks of one (template, stage): every pipeline of that template has one."""


def plan_group_shape(plan: Plan, tied_pairs: Sequence[tuple[int, int]] = ()) -> GroupShape:
    """The groups the runtime builds for ``plan``, counted without enumerating its ranks.

    Pipelines that share a template hold their layers alike, so a layer's holders are described by
    its stage in each distinct template; two groups share a rank exactly when they share a
    (template, stage) pair. The cost is O(templates x layers), independent of the node count.

    Args:
        plan: The plan to build groups for.
        tied_pairs: ``(source layer, tied layer)`` per tied weight (a profile's ``tied_to``).

    Returns:
        Group count, creation rounds and largest group size, as the runtime would find them.
    """
    if not plan.pipelines:
        return GroupShape(groups=0, rounds=0, largest_members=0)
    templates = list({id(p.template): p.template for p in plan.pipelines}.values())
    count_of = {id(t): sum(p.template is t for p in plan.pipelines) for t in templates}
    num_layers = templates[0].num_layers
    columns = [t.layout.stage_of_layer[:num_layers] for t in templates]

    def members(stages_per_template: Sequence[Sequence[int]]) -> frozenset[_Member]:
        return frozenset((t, s) for t, stages in enumerate(stages_per_template) for s in stages)

    def size(group: frozenset[_Member]) -> int:
        return sum(count_of[id(templates[t])] for t, _ in group)

    layer_groups: dict[frozenset[_Member], None] = {}
    for signature in zip(*columns, strict=True):
        layer_groups.setdefault(members([(s,) for s in signature]), None)
    ordered = list(layer_groups)
    for source, tied in tied_pairs:
        pair = members([sorted({column[source], column[tied]}) for column in columns])
        if pair not in layer_groups:
            ordered.append(pair)
    real = [group for group in ordered if size(group) > 1]
    return GroupShape(
        groups=len(set(real)),
        rounds=len(creation_rounds(real)),
        largest_members=max(map(size, real), default=0),
    )
