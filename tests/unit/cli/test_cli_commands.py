"""The `oobleck` command lists only verbs that exist, and each verb's help states a default once."""

from __future__ import annotations

import re

import pytest

from oobleck.cli import COMMANDS, main


def test_help_lists_no_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`oobleck --help` advertises no `run` (it never existed) and lists agent, status, jobs, cancel."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"^\s+run\s", out, re.MULTILINE)
    for verb in ("agent", "submit", "status", "jobs", "cancel", "demo"):
        assert re.search(rf"^\s+{verb}\s", out, re.MULTILINE), verb


# NOTE: `demo` imports its live views (seconds); its flags are the demo's own, tested with the demo.
@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"demo"}))
def test_every_listed_command_has_help_with_each_default_once(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each listed verb answers --help, and no flag's help says "default" twice or "(default: None)"."""
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    for entry in re.split(r"\s(?=--?[a-z])", text):
        assert entry.count("default") <= 1, entry
