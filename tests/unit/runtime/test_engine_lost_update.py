"""The OOBLECK_TEST_LOST_UPDATE test hook: parsed strictly, off when unset, aimed at one node's generation."""

from __future__ import annotations

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.engine.lost_update import LostUpdate, parse_lost_update


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
