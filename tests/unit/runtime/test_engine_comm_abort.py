"""An abort from another thread between two collectives surfaces as the latched CommunicationError."""

from __future__ import annotations

import pytest

from oobleck.runtime.engine.comm import Comm, CommunicationError


def test_a_group_looked_up_after_an_abort_raises_the_latched_error() -> None:
    """The groups an abort destroyed are asked for: the training thread gets the notice, not a KeyError."""
    comm = Comm("gloo")
    comm._groups[(0, 1)] = object()
    comm.abort("failure notice")
    with pytest.raises(CommunicationError, match="failure notice"):
        comm.group((0, 1))


def test_a_group_this_rank_never_made_is_a_key_error() -> None:
    """Without an abort, asking for a group of other ranks is a programming error (KeyError)."""
    with pytest.raises(KeyError):
        Comm("gloo").group((2, 3))
