"""The OOBLECK_TRANSFER_HOLD test hook: parsed strictly, off when unset, and bounded by an abort."""

from __future__ import annotations

import time

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.plan import Transfer
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.transfer import TransferHold, hold_sends, parse_transfer_hold

COPY = (Transfer(layer=0, src_node=2, dst_node=1, bytes=296448),)


def test_unset_or_empty_means_no_hold() -> None:
    """An unset or empty variable turns the hook off."""
    assert parse_transfer_hold(None) is None and parse_transfer_hold("") is None


def test_generation_and_seconds_are_parsed() -> None:
    """``1:2.5`` holds the sources of generation 1 for 2.5 s."""
    assert parse_transfer_hold("1:2.5") == TransferHold(generation=1, seconds=2.5)


@pytest.mark.parametrize("text", ["5", "x:1", "1:", "0:1", "1:-2", "1:inf"])
def test_bad_values_name_the_variable_and_the_form(text: str) -> None:
    """A malformed value is a ConfigError naming the variable, the value and the expected form."""
    with pytest.raises(ConfigError, match=r"OOBLECK_TRANSFER_HOLD=.*GENERATION:SECONDS"):
        parse_transfer_hold(text)


def test_only_a_source_of_the_held_generation_waits() -> None:
    """The receiver, another generation and an unset hook return at once; the source waits."""
    comm, hold = Comm("gloo"), TransferHold(generation=1, seconds=0.2)
    start = time.monotonic()
    hold_sends(hold, COPY, generation=1, node=1, comm=comm)
    hold_sends(hold, COPY, generation=2, node=2, comm=comm)
    hold_sends(None, COPY, generation=1, node=2, comm=comm)
    assert time.monotonic() - start < 0.1
    hold_sends(hold, COPY, generation=1, node=2, comm=comm)
    assert time.monotonic() - start >= 0.2


def test_an_abort_ends_the_hold_early() -> None:
    """A latched communication error (an abort after a failure notice) ends the wait at once."""
    comm = Comm("gloo")
    comm.abort("notice")
    start = time.monotonic()
    hold_sends(TransferHold(generation=1, seconds=30.0), COPY, generation=1, node=2, comm=comm)
    assert time.monotonic() - start < 0.5
