"""``oobleck agent``: the same agent as ``python -m oobleck.runtime.agent`` (started by hand on a node)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The agent's flags (``oobleck.runtime.agent`` owns them)."""
    from oobleck.runtime.agent import build_parser as agent_parser

    parser = agent_parser()
    parser.prog = "oobleck agent"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck agent``; returns the agent's exit status."""
    from oobleck.runtime.agent import main as agent_main

    return agent_main(argv)
