"""``python -m oobleck.demo``: the planner and the simulator on their embedded defaults.

Runs ``oobleck plan`` for GPT-3 175B on 32 H100 nodes with one node failing, then the failure
simulator comparing recovery policies on one shared trace. The live local-cluster run with a killed
node is ``python -m oobleck.runtime.master --hostfile examples/hosts.local4 --config
examples/tiny_gpt2.yaml`` (see README).
"""

from __future__ import annotations

import sys

from oobleck.cli import plan, sim


def main() -> int:
    """Run the plan and simulation demos; return the first non-zero exit code."""
    status = plan.main(["--nodes", "32", "--fail", "3"])
    return status or sim.main(["--nodes", "32", "--fail-rate", "0.01", "--seed", "1", "--quiet"])


if __name__ == "__main__":
    sys.exit(main())
