"""The reconfiguration rules on node lists: take spares, borrow, merge, split, join.

Shared by the full re-plan (``reconfigure.full_replan``, every pipeline) and the incremental one
(``replan``, the touched pipelines): both apply exactly these functions, so they agree by
construction wherever the incremental one answers the rules' global questions like the full one.

Assumptions:
    * Lists are in pipeline order; a rule's choice among equals follows that order as documented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import PipelineTemplate
from oobleck.planning.transfer import LayerBytes, node_ranges


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
class Shaper:
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
                self.give(receiver, max(reversed(donors), key=len))

    def give(self, receiver: list[int], donor: list[int]) -> None:
        """Move nodes from ``donor``'s cheaper end to ``receiver`` while ``donor`` stays >= n0."""
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
