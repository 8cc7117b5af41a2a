"""``python -m oobleck.sim``: the simulator's command line (see ``oobleck.cli.sim``)."""

from __future__ import annotations

import sys

from oobleck.cli.sim import main

if __name__ == "__main__":
    sys.exit(main())
