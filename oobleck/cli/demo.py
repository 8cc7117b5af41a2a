"""``oobleck demo``: the same demo as ``python -m oobleck.demo`` (a real run with kills, shown live)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags (``oobleck.demo.command`` owns them)."""
    from oobleck.demo.command import build_parser as demo_parser

    return demo_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck demo``; returns its exit status."""
    from oobleck.demo.command import main as demo_main

    return demo_main(argv)
