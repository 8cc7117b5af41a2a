"""Hostfiles and Slurm node lists: which agents to start, where, with how many slots.

Accepted hostfile lines (Open MPI / DeepSpeed / LambdaLabs conventions)::

    node01                 # a bare host name: one agent with one slot
    node02 slots=4         # one agent driving 4 workers (GPUs)
    node03 slots=2 port=2222   # ssh port for remote hosts

Assumptions:
- Each line is one agent (one node, one failure domain). Several lines naming the same host start
  several agents there, which is how a single machine plays a multi-node cluster in tests.
- A key given twice on one line is ambiguous and refused, as is an unknown key.
- Slurm node lists use the ``prefix[01-04,07]suffix`` syntax; expansion is written here because
  the usual library is GPL-licensed.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from oobleck.errors import ConfigError
from oobleck.runtime.control.preflight import read_text_file

_KNOWN_KEYS = ("slots", "port")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\-\[\]]+$")


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One agent to start: the host it runs on, its worker slots, and its ssh port."""

    host: str
    """Host name or address; local names start a local process."""
    slots: int = 1
    """Workers (devices) the agent drives; every agent of a job must have the same count."""
    port: int | None = None
    """ssh port for remote hosts; None uses ssh's own default/config."""
    source: str = "<hostfile>"
    """``file:line`` the entry came from, for error messages."""


def _parse_int(value: str, key: str, where: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise ConfigError(f"{where}: {key}={value!r} is not an integer in [{low}, {high}]")
    return int(value)


def parse_hostfile_text(text: str, source: str = "<hostfile>") -> tuple[HostEntry, ...]:
    """Parse hostfile contents.

    Args:
        text: The file contents.
        source: The file name, used in error messages as ``source:line``.

    Returns:
        One entry per non-comment line, in file order.

    Raises:
        ConfigError: A malformed line, an unknown or repeated key, a bad value, mixed slot counts,
            or no hosts at all; the message names ``source:line``.
    """
    entries: list[HostEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host, *fields = line.split()
        if "=" in host or not _HOST_RE.match(host):
            raise ConfigError(
                f"{where}: {raw.strip()!r} does not start with a host name; use 'HOST [slots=N] [port=P]'"
            )
        values: dict[str, int] = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if not sep or key not in _KNOWN_KEYS:
                raise ConfigError(f"{where}: unknown field {field!r}; valid fields are slots=N and port=P")
            if key in values:
                raise ConfigError(f"{where}: {key} given twice on one line; give it once")
            values[key] = _parse_int(value, key, where, 1, 1024 if key == "slots" else 65535)
        entries.append(HostEntry(host, values.get("slots", 1), values.get("port"), where))
    if not entries:
        raise ConfigError(f"{source}: no hosts; add one line per agent, e.g. 'localhost slots=1'")
    slot_counts = sorted({e.slots for e in entries})
    if len(slot_counts) > 1:
        odd = next(e for e in entries if e.slots != entries[0].slots)
        raise ConfigError(
            f"{odd.source}: slots={odd.slots} but {entries[0].source} has slots={entries[0].slots}; "
            "every node of a job needs the same slot count"
        )
    return tuple(entries)


def parse_hostfile(path: str | Path) -> tuple[HostEntry, ...]:
    """Read and parse a hostfile.

    Args:
        path: The hostfile.

    Returns:
        One entry per agent, in file order.

    Raises:
        ConfigError: The file is missing, a directory, binary, larger than
            :data:`~oobleck.runtime.control.preflight.MAX_TEXT_BYTES`, or malformed (the message
            names file:line).
    """
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"--hostfile {file}: no such file")
    return parse_hostfile_text(read_text_file(file, "hostfile"), str(file))


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _expand_range(body: str, nodelist: str) -> list[str]:
    values: list[str] = []
    for item in body.split(","):
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ConfigError(f"SLURM_JOB_NODELIST={nodelist!r}: bad range {item!r} in [{body}]")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ConfigError(f"SLURM_JOB_NODELIST={nodelist!r}: range {item!r} runs backwards")
        width = len(low)
        values.extend(str(i).zfill(width) for i in range(int(low), int(high) + 1))
    return values


def expand_nodelist(nodelist: str) -> tuple[str, ...]:
    """Expand a Slurm node list such as ``node[01-04,07],gpu-a[1-2]``.

    Zero padding is kept (``[08-10]`` gives ``08 09 10``); several bracket groups in one name expand
    as a cartesian product, as Slurm does.

    Args:
        nodelist: The compressed list from ``SLURM_JOB_NODELIST``.

    Returns:
        Host names in Slurm's order.

    Raises:
        ConfigError: Unbalanced brackets or a malformed range.
    """
    hosts: list[str] = []
    for part in _split_top_level(nodelist.strip()):
        if not part:
            continue
        if part.count("[") != part.count("]"):
            raise ConfigError(f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets in {part!r}")
        pieces = re.split(r"\[([^\]]*)\]", part)
        choices = [
            [piece] if i % 2 == 0 else _expand_range(piece, nodelist) for i, piece in enumerate(pieces)
        ]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise ConfigError(f"SLURM_JOB_NODELIST={nodelist!r}: no hosts")
    return tuple(hosts)


def hosts_from_slurm(env: dict[str, str] | None = None) -> tuple[HostEntry, ...] | None:
    """Agents for the current Slurm allocation, one per node, or None outside Slurm.

    Slots come from ``SLURM_GPUS_ON_NODE``, else ``SLURM_NTASKS_PER_NODE``, else 1.

    Args:
        env: The environment to read (``os.environ`` when None).

    Returns:
        One entry per allocated node, or None when ``SLURM_JOB_NODELIST`` is unset.

    Raises:
        ConfigError: The node list or slot count is malformed.
    """
    environ = os.environ if env is None else env
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    slots_text = environ.get("SLURM_GPUS_ON_NODE") or environ.get("SLURM_NTASKS_PER_NODE") or "1"
    slots = _parse_int(slots_text.split("(")[0], "slots", "SLURM_GPUS_ON_NODE", 1, 1024)
    return tuple(HostEntry(h, slots, None, "SLURM_JOB_NODELIST") for h in expand_nodelist(nodelist))
