"""Checks of user-supplied files, mappings and numbers that fail with one-line ConfigErrors.

Profiles, cost constants and the simulator's ``--costs`` file are all JSON objects a user may write
by hand; they share these checks so that every such file reports a missing file, broken JSON, an
unknown key or a bad number the same way: the file (and line) first, then the key, the bad value and
what would work.

Assumptions:
    * Callers build frozen dataclasses whose ``__post_init__`` raises ConfigError with a generic
      prefix (e.g. ``costs: ``); :func:`errors_from` swaps that prefix for the real source.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file a user named.

    Args:
        path: The file.
        what: What the file holds, for the messages (``"profile"``, ``"cost constants"``).

    Returns:
        The parsed document (not yet validated).

    Raises:
        ConfigError: the file is missing or unreadable, or is not valid JSON (the message gives the
            line of the first error).
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what} ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """The catalogue entry called ``name``.

    Args:
        table: Name -> entry, in the order the message should list the names.
        name: What the user asked for.
        what: What an entry is, for the message (``"model"``, ``"hardware"``).

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}") from None


def check_keys(
    data: Any, known: Sequence[str], *, source: str, expected: str, noun: str = "key"
) -> Mapping[str, Any]:
    """Reject anything but a mapping whose keys are all in ``known``.

    A typo in a hand-written file must be an error, never a silently ignored setting.

    Args:
        data: The parsed document.
        known: Valid keys, in the order the message should list them.
        source: File name or label the message starts with.
        expected: What a valid document is, e.g. ``"an object of cost constants"``.
        noun: What a key is called in this format (``"key"`` or ``"field"``).

    Returns:
        ``data``, now known to be a mapping.

    Raises:
        ConfigError: ``data`` is not a mapping, or has unknown keys (all of them are named, sorted,
            followed by the valid ones).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected {expected}, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown {noun}(s) {unknown}; valid {noun}s: {', '.join(known)}")
    return data


def constants_from_mapping(cls: type[D], data: Any, *, source: str, expected: str, prefix: str) -> D:
    """Build a dataclass of constants from a hand-written mapping; missing keys keep their defaults.

    Args:
        cls: A dataclass whose ``__post_init__`` checks its values.
        data: The parsed mapping.
        source: File name or label the messages start with.
        expected: What a valid document is, for the message on a non-mapping.
        prefix: The generic prefix ``cls``'s own messages start with (replaced by ``source``).

    Raises:
        ConfigError: not a mapping, an unknown key (the valid ones are listed) or a bad value.
    """
    known = [item.name for item in fields(cls)]
    data = check_keys(data, known, source=source, expected=expected)
    with errors_from(source, strip=prefix):
        return cls(**dict(data))


def check_number(name: str, value: Any, *, positive: bool, source: str) -> None:
    """Require a finite real number that is ``> 0`` (``positive``) or ``>= 0``.

    Raises:
        ConfigError: ``value`` is a bool, not a number, not finite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{source}: {name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


@contextmanager
def errors_from(source: str, *, strip: str = "") -> Iterator[None]:
    """Re-raise a ConfigError from the block as one that starts with ``source``.

    Args:
        source: File name or label the message should start with.
        strip: A generic prefix the inner message starts with that ``source`` replaces.

    Raises:
        ConfigError: the inner error, relabelled; still one line, no chained traceback.
    """
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"{source}: {str(error).removeprefix(strip)}") from None
