"""A plan's member list defined by its predecessor's and a change, built only when first read.

A re-plan after one loss must not copy the list of every member (O(nodes)); the new plan records
``(predecessor's members, lost, joined)`` instead, and :attr:`oobleck.planning.plan.Plan.nodes`
resolves it on first read with one C-level copy per unresolved link.

Assumptions:
    * ``lost`` are members of the base and ``joined`` are not (the re-plan validated both).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class MemberChange:
    """Sorted members defined as a predecessor's minus ``lost`` plus ``joined``, resolved on demand."""

    base: tuple[int, ...] | MemberChange
    """The predecessor's members (sorted) or its own unresolved change."""
    lost: tuple[int, ...]
    """Sorted members of ``base`` that are gone."""
    joined: tuple[int, ...]
    """Sorted new members (not in ``base``)."""
    members: tuple[int, ...] | None = None
    """The result, once resolved (``base`` is then dropped so the chain can be freed)."""

    def resolve(self) -> tuple[int, ...]:
        """The sorted members: one C-level copy per unresolved change up the chain (no sort)."""
        chain: list[MemberChange] = []
        step: MemberChange = self
        while step.members is None:
            chain.append(step)
            if isinstance(step.base, tuple):
                members = step.base
                break
            step = step.base
        else:
            members = step.members
        for change in reversed(chain):
            updated = list(members)
            for node in change.lost:
                del updated[bisect.bisect_left(updated, node)]
            for node in change.joined:
                bisect.insort(updated, node)
            members = change.members = tuple(updated)
            change.base = ()
        return members
