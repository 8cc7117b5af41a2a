"""Tests for oobleck.planning.validation: the shared one-line checks of user files and mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.validation import check_keys, check_number, errors_from, lookup, read_json_file


def test_read_json_file_parses_an_object(tmp_path: Path) -> None:
    """A valid file comes back parsed, unvalidated."""
    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2]}')
    assert read_json_file(path, "thing") == {"a": [1, 2]}


def test_read_json_file_names_the_path_for_missing_unreadable_and_broken_files(tmp_path: Path) -> None:
    """Missing, unreadable (a directory) and malformed files are one-line ConfigErrors naming the path."""
    with pytest.raises(ConfigError, match=r"missing.json: thing file not found$"):
        read_json_file(tmp_path / "missing.json", "thing")
    with pytest.raises(ConfigError, match=r": cannot read thing \("):
        read_json_file(tmp_path, "thing")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "a": }')
    with pytest.raises(ConfigError, match=r"broken.json:2: not valid JSON") as caught:
        read_json_file(broken, "thing")
    assert "\n" not in str(caught.value)


def test_check_keys_lists_every_unknown_key_and_the_valid_ones() -> None:
    """Unknown keys are all named, sorted, followed by the valid keys in the caller's order."""
    assert check_keys({"b": 1}, ["b", "a"], source="f.json", expected="an object") == {"b": 1}
    with pytest.raises(ConfigError, match=r"^f.json: unknown key\(s\) \['x', 'y'\]; valid keys: b, a$"):
        check_keys({"y": 1, "b": 2, "x": 3}, ["b", "a"], source="f.json", expected="an object")
    with pytest.raises(ConfigError, match=r"^f.json: unknown field\(s\) \['x'\]; valid fields: a$"):
        check_keys({"x": 1}, ["a"], source="f.json", expected="an object", noun="field")


def test_check_keys_rejects_a_non_mapping() -> None:
    """A document that is not a mapping is an error saying what was expected and what was found."""
    with pytest.raises(ConfigError, match=r"^f.json: expected an object of things, got list$"):
        check_keys([1], ["a"], source="f.json", expected="an object of things")


@pytest.mark.parametrize(
    ("value", "positive", "rule"),
    [
        (True, False, "must be a finite number"),
        ("1", False, "must be a finite number"),
        (float("inf"), False, "must be a finite number"),
        (-1, False, "must be >= 0"),
        (0.0, True, "must be > 0"),
    ],
)
def test_check_number_rejects_bad_values(value: object, positive: bool, rule: str) -> None:
    """Bools, non-numbers, non-finite and out-of-range values are rejected with the rule they broke."""
    with pytest.raises(ConfigError, match=f"^costs: rate {rule}, got"):
        check_number("rate", value, positive=positive, source="costs")


def test_check_number_accepts_valid_values() -> None:
    """Zero passes a non-negative check and integers count as numbers."""
    check_number("rate", 0, positive=False, source="costs")
    check_number("rate", 2, positive=True, source="costs")


def test_errors_from_replaces_the_generic_prefix_with_the_source() -> None:
    """A ConfigError raised inside the block is re-raised starting with the source, prefix stripped."""
    with (
        pytest.raises(ConfigError, match=r"^f.json: rate must be > 0$"),
        errors_from("f.json", strip="costs: "),
    ):
        raise ConfigError("costs: rate must be > 0")
    with pytest.raises(ValueError, match="other"), errors_from("f.json"):
        raise ValueError("other")


def test_lookup_returns_the_entry_or_lists_the_names_in_table_order() -> None:
    """A known name gives its entry; an unknown one is a ConfigError listing every name in order."""
    table = {"b": 2, "a": 1}
    assert lookup(table, "a", "thing") == 1
    with pytest.raises(ConfigError, match=r"^unknown thing 'c'; choose one of: b, a$"):
        lookup(table, "c", "thing")
