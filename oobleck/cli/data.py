"""``oobleck data prepare ...``: the same command as ``python -m oobleck.data`` (one-off tokenisation)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m oobleck.data`` with ``argv``; 0 on success, 2 for bad input."""
    from oobleck.data.__main__ import main as data_main

    return data_main(argv)
