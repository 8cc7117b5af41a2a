"""Tests for membership generations: message round trip and the deterministic rank map."""

from __future__ import annotations

import pytest

from oobleck.runtime.control.membership import Membership


def test_rank_map_sorts_node_ids_and_counts_slots():
    """Ranks are assigned by sorted node id, slots ranks per node, whatever order members arrive in."""
    membership = Membership(3, (5, 0, 2), slots=2)
    assert membership.rank_of_node() == {0: 0, 2: 2, 5: 4}
    assert membership.world_size == 6


def test_message_round_trip():
    """A membership survives to_message/from_message unchanged (members sorted)."""
    original = Membership(2, (0, 1, 3), lost=(2,), detected_at=10.5, failure_at=9.0, reason="node 2 lost")
    message = original.to_message()
    assert message["type"] == "membership"
    assert Membership.from_message(message) == original


def test_malformed_message_is_refused():
    """A membership message without members is a ValueError, not a crash deeper in."""
    with pytest.raises(ValueError, match="malformed"):
        Membership.from_message({"type": "membership", "generation": 1})
