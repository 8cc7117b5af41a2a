"""The OOBLECK_TEST_LOST_UPDATE test hook: parsed strictly, off when unset, aimed at one node's generation."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.lost_update import LostUpdate, fail_when_aborted, parse_lost_update


def test_unset_or_empty_means_off() -> None:
    assert parse_lost_update(None) is None and parse_lost_update("") is None


def test_only_the_named_nodes_steps_of_the_named_generation_are_hit() -> None:
    """``1:4``: node 4 in generation 1, not node 4 later nor another node then."""
    hook = parse_lost_update("1:4")
    assert hook == LostUpdate(generation=1, node=4)
    assert hook.hits(generation=1, node=4)
    assert not hook.hits(generation=2, node=4) and not hook.hits(generation=1, node=0)


@pytest.mark.parametrize("text", ["4", "x:1", "1:", ":4", "-1:4", "1:-4", "1.5:4"])
def test_bad_values_name_the_variable_and_the_form(text: str) -> None:
    """A malformed value is a ConfigError naming the variable, the value and the expected form."""
    with pytest.raises(ConfigError, match=r"OOBLECK_TEST_LOST_UPDATE=.*GENERATION:NODE"):
        parse_lost_update(text)


def test_the_hit_rank_holds_until_an_abort_then_fails() -> None:
    """It fails as a rank whose all-reduce a peer's death broke: once the notice's abort latches,
    not at once (which aborted its own world under peers still finishing the step)."""
    comm = Comm("gloo")
    timer = threading.Timer(0.3, comm.abort, args=("notice: node 0 lost",))
    start = time.monotonic()
    timer.start()
    error = fail_when_aborted(comm, 7)
    assert time.monotonic() - start >= 0.3
    assert "OOBLECK_TEST_LOST_UPDATE: step 7 failed after its final all-reduce" in str(error)


def test_without_an_abort_the_hold_ends_at_the_communication_timeout() -> None:
    comm = Comm("gloo", timeout=timedelta(seconds=0.2))
    start = time.monotonic()
    fail_when_aborted(comm, 1)
    assert 0.2 <= time.monotonic() - start < 5.0
