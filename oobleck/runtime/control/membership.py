"""Membership generations: who is in the job, what changed, and how node ids map to ranks.

Assumptions:
- Only the master creates generations; each one is broadcast as a ``membership`` message and is
  immutable afterwards. Workers may see several at once and act on the newest.
- Node ids are stable for the life of the job; ranks are renumbered every generation by sorting
  node ids, so every worker derives the same rank map from the same member list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Membership:
    """One membership generation as the master announced it."""

    generation: int
    """Monotonic epoch; process groups and store keys of a generation are namespaced by it."""
    members: tuple[int, ...]
    """Node ids in the job, ascending."""
    lost: tuple[int, ...] = ()
    """Nodes removed by this generation (failed, hung, or a worker exited)."""
    joined: tuple[int, ...] = ()
    """Nodes added by this generation (late or repaired agents)."""
    detected_at: float = 0.0
    """Wall-clock time (``time.time()``) the master decided this generation."""
    failure_at: float = 0.0
    """Best wall-clock estimate of when the failure happened (last sign of life); 0 for joins."""
    reason: str = ""
    """Human-readable cause, for logs and metrics."""
    slots: int = 1
    """Workers per node (the same on every node of a job)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Forward-compatible room for fields a newer master adds."""

    def rank_of_node(self) -> dict[int, int]:
        """First rank of every member: members sorted by node id, ``slots`` ranks each."""
        return {node: i * self.slots for i, node in enumerate(sorted(self.members))}

    @property
    def world_size(self) -> int:
        """Ranks in this generation."""
        return len(self.members) * self.slots

    def to_message(self) -> dict[str, Any]:
        """The ``membership`` control message."""
        return {
            "type": "membership",
            "generation": self.generation,
            "members": list(self.members),
            "lost": list(self.lost),
            "joined": list(self.joined),
            "detected_at": self.detected_at,
            "failure_at": self.failure_at,
            "reason": self.reason,
            "slots": self.slots,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Membership:
        """Parse a ``membership`` message (already authenticated).

        Raises:
            ValueError: A field is missing or has the wrong type.
        """
        try:
            return cls(
                generation=int(message["generation"]),
                members=tuple(sorted(int(n) for n in message["members"])),
                lost=tuple(int(n) for n in message.get("lost", ())),
                joined=tuple(int(n) for n in message.get("joined", ())),
                detected_at=float(message.get("detected_at", 0.0)),
                failure_at=float(message.get("failure_at", 0.0)),
                reason=str(message.get("reason", "")),
                slots=int(message.get("slots", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed membership message: {exc}") from exc
