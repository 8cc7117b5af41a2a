"""Entry point of ``python -m oobleck.demo``; the flags and the parts are in :mod:`oobleck.demo`."""

from __future__ import annotations

import sys

from oobleck.demo.command import main

if __name__ == "__main__":
    sys.exit(main())
