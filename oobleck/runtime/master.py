"""``python -m oobleck.runtime.master``: the control-plane master (see ``oobleck.cli.master``)."""

from __future__ import annotations

import sys

from oobleck.cli.master import main

if __name__ == "__main__":
    sys.exit(main())
