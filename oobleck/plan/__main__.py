"""Entry point of ``python -m oobleck.plan``; see ``oobleck.cli.plan`` for the flags."""

from __future__ import annotations

import sys

from oobleck.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
