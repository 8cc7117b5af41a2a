"""Tests for hostfile parsing and Slurm node-list expansion."""

from __future__ import annotations

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.control.hostfile import (
    HostEntry,
    expand_nodelist,
    hosts_from_slurm,
    parse_hostfile,
    parse_hostfile_text,
)


def test_bare_and_slots_lines_with_comments():
    """Bare names, slots/port fields, comments and blank lines parse in file order."""
    text = "# cluster\nnode1\n\nnode2 slots=1 port=2222  # ssh port\nnode1\n"
    entries = parse_hostfile_text(text, "h")
    assert [(e.host, e.slots, e.port) for e in entries] == [
        ("node1", 1, None),
        ("node2", 1, 2222),
        ("node1", 1, None),
    ]
    assert entries[1].source == "h:4"


def test_shipped_local4_example():
    """examples/hosts.local4 describes four one-slot local agents."""
    entries = parse_hostfile("examples/hosts.local4")
    assert [(e.host, e.slots) for e in entries] == [("localhost", 1)] * 4


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("node1 slots=x\n", r"h:1: slots='x'"),
        ("node1\nnode2 gpus=2\n", r"h:2: unknown field 'gpus=2'"),
        ("node1 slots=2 slots=2\n", r"h:1: slots given twice"),
        ("slots=2\n", r"h:1: .* does not start with a host name"),
        ("node1 port=70000\n", r"h:1: port='70000'"),
        ("node1 slots=0\n", r"h:1: slots='0'"),
        ("# nothing\n", r"h: no hosts"),
        ("a slots=1\nb slots=2\n", r"h:2: slots=2 but h:1 has slots=1"),
    ],
)
def test_malformed_lines_name_file_and_line(text, match):
    """Each malformed hostfile is refused with file:line, the bad value and a fix."""
    with pytest.raises(ConfigError, match=match):
        parse_hostfile_text(text, "h")


def test_missing_file():
    """A missing hostfile is a ConfigError naming the flag."""
    with pytest.raises(ConfigError, match="--hostfile"):
        parse_hostfile("/nonexistent/hosts")


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a,b", ["a", "b"]),
        ("gpu[8-10]x,cpu1", ["gpu8x", "gpu9x", "gpu10x", "cpu1"]),
        ("r[1-2]-n[08-09]", ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]),
        ("solo", ["solo"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    """Slurm node lists expand with zero padding kept and products for several groups."""
    assert list(expand_nodelist(nodelist)) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node[a-b]", "node[5-2]", ""])
def test_expand_nodelist_rejects_malformed(bad):
    """A malformed node list is a ConfigError quoting it."""
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(bad)


def test_hosts_from_slurm_env():
    """Inside Slurm one agent per node is planned, with GPUs per node as slots; outside, None."""
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "4"}
    assert hosts_from_slurm(env) == (
        HostEntry("n1", 4, None, "SLURM_JOB_NODELIST"),
        HostEntry("n2", 4, None, "SLURM_JOB_NODELIST"),
    )
    assert hosts_from_slurm({}) is None


def test_binary_directory_and_huge_hostfiles(tmp_path):
    """A binary hostfile, a directory and a file over the size cap are ConfigErrors naming the path."""
    binary = tmp_path / "hosts"
    binary.write_bytes(b"localhost\n\x7fELF\x02\x01\x01\x00\x00")
    with pytest.raises(ConfigError, match=f"{binary}:2: binary data"):
        parse_hostfile(binary)
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory; give the path of the hostfile"):
        parse_hostfile(tmp_path)
    binary.write_text("localhost slots=1\n" * 70_000)
    with pytest.raises(ConfigError, match="bytes is larger than the 1048576 bytes a hostfile may have"):
        parse_hostfile(binary)
