"""The demo's command line: flags, their checks, and the two parts run in order.

Assumptions:
    * Every flag has a default, so ``make demo`` passes none; a bad flag is refused before anything
      starts (exit 2, one line).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from oobleck.cli._common import ArgumentParser, new_parser, run_command
from oobleck.demo.live import BASE_JOB, HOSTFILE, KILLED_NODE, NODES, STEPS_AFTER_KILL, run_live
from oobleck.demo.paper import print_at_scale
from oobleck.errors import ConfigError
from oobleck.viz.runs import METRICS_FILE

_EXAMPLE = "python -m oobleck.demo --steps 40 --kill-after-step 20 --node 0 --run-dir runs/demo"


def build_parser() -> ArgumentParser:
    """The demo's flags; every one has a default, so ``make demo`` passes none."""
    parser = new_parser(
        "demo",
        description=(
            "Part 1: plan GPT-3 175B on 32 H100 nodes, reconfigure after one node fails, and simulate\n"
            "24 h of random failures under every recovery policy (nothing is launched).\n"
            "Part 2: run the tiny GPT-2 job in pipelines that span nodes on 5 local agents (f=1), SIGKILL\n"
            "one agent's process group mid-run, and print the measured recovery timeline (with the layers\n"
            "copied between survivors and their bytes) next to the planning core's prediction."
        ),
        example=_EXAMPLE,
    )
    parser.prog = "python -m oobleck.demo"
    add = parser.add_argument
    add("--steps", type=int, default=40, metavar="N", help="training steps of the live job")
    kill_help = f"SIGKILL the node once step K is done, K <= steps-{STEPS_AFTER_KILL} (default: steps // 2)"
    add("--kill-after-step", type=int, default=argparse.SUPPRESS, metavar="K", help=kill_help)
    add("--node", type=int, default=KILLED_NODE, metavar="ID", help=f"node to kill, 0..{NODES - 1}")
    run_dir_help = "new folder for the job's metrics.jsonl and logs (default: runs/demo-<timestamp>)"
    add("--run-dir", default=argparse.SUPPRESS, metavar="DIR", help=run_dir_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo.

    Args:
        argv: flags without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 once the live job finished every step after losing a node; 2 on a bad flag or a failed
        job (one line on stderr naming the run directory).
    """
    return run_command(build_parser(), _run, argv)


def check_flags(args: argparse.Namespace) -> tuple[int, int, int, Path]:
    """Validate the live job's flags before anything starts.

    Args:
        args: the namespace of :func:`build_parser`.

    Returns:
        ``(steps, kill_after_step, node, run_dir)``.

    Raises:
        ConfigError: a flag is out of range, or ``--run-dir`` already holds a run.
    """
    steps, node = args.steps, args.node
    if steps < 1 + STEPS_AFTER_KILL:
        raise ConfigError(
            f"--steps must be >= {1 + STEPS_AFTER_KILL} (steps on both sides of the kill), got {steps}"
        )
    kill = getattr(args, "kill_after_step", steps // 2)
    if not 1 <= kill <= steps - STEPS_AFTER_KILL:
        raise ConfigError(
            f"--kill-after-step must be in 1..{steps - STEPS_AFTER_KILL} for --steps {steps} "
            f"(steady steps before the kill and {STEPS_AFTER_KILL} after it), got {kill}"
        )
    if not 0 <= node < NODES:
        raise ConfigError(f"--node must be a node id of {HOSTFILE.name}, 0..{NODES - 1}, got {node}")
    run_dir = Path(getattr(args, "run_dir", None) or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    if (run_dir / METRICS_FILE).exists():
        raise ConfigError(f"--run-dir {run_dir} already holds a run ({METRICS_FILE}); pass a new folder")
    for path in (HOSTFILE, BASE_JOB):
        if not path.is_file():
            raise ConfigError(f"{path}: not found; run the demo from a checkout of the oobleck repository")
    return steps, kill, node, run_dir


def _run(args: argparse.Namespace) -> int:
    steps, kill_after, node, run_dir = check_flags(args)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 100)
    print_at_scale(out)
    run_live(out, steps=steps, kill_after=kill_after, node=node, run_dir=run_dir)
    return 0
