"""``python -m oobleck.runtime.submit``: submit a job to a daemon master (see ``oobleck.cli.submit``)."""

from __future__ import annotations

import sys

from oobleck.cli.submit import main

if __name__ == "__main__":
    sys.exit(main())
