"""``python -m oobleck.sim sweep``: a grid of simulations into one JSON or CSV file.

A thin shell over :func:`oobleck.sim.sweep.run_sweep`: list flags become a
:class:`~oobleck.sim.sweep.SweepGrid`, the other flags the shared
:class:`~oobleck.sim.SimulationConfig`; cells run on Ray with ``--ray``/``--ray-address``, in a
process pool with ``--workers N``, else in this process.

Assumptions:
    * The progress bar goes to stderr, only when it is a terminal and ``--quiet`` is absent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from oobleck.cli._common import new_parser, run_command
from oobleck.errors import ConfigError
from oobleck.sim.config import POLICIES, SimulationConfig
from oobleck.sim.costs import SimCosts
from oobleck.sim.report import check_output_path
from oobleck.sim.sweep import SweepGrid, run_sweep

_EXAMPLE = (
    "python -m oobleck.sim sweep --nodes 16,32 --fail-rates 0.001,0.01 --models gpt3-2.7b "
    "--seeds 3 --out sweep.csv --workers 2\n"
    "  python -m oobleck.sim sweep ... --ray                   (a local Ray instance)\n"
    "  python -m oobleck.sim sweep ... --ray-address HEAD:6379 (an existing Ray cluster)"
)


def _list(kind: Callable[[str], object]) -> Callable[[str], tuple[object, ...]]:
    def parse(text: str) -> tuple[object, ...]:
        try:
            return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck sim sweep``; single values default to :class:`SimulationConfig`'s."""
    defaults = SimulationConfig()
    parser = new_parser(
        "sim sweep",
        description=(
            "Simulate every (model, nodes, failure rate, seed) of a grid, all policies per cell on "
            "one trace, and write one row per cell and policy."
        ),
        example=_EXAMPLE,
    )
    add = parser.add_argument
    add("--models", type=_list(str), default=(defaults.model,), help="comma-separated models")
    add("--nodes", type=_list(int), default=(defaults.nodes,), help="comma-separated cluster sizes")
    add(
        "--fail-rates",
        type=_list(float),
        default=(defaults.fail_rate,),
        help="comma-separated failures per node per hour",
    )
    add("--seeds", type=int, default=3, metavar="K", help="seeds 0..K-1 per cell")
    add("--policy", default="all", metavar="NAMES", help=f"policies from {', '.join(POLICIES)}, or all")
    add("--hours", type=float, default=defaults.hours, help="simulated hours per cell")
    add("--hardware", default=defaults.hardware, metavar="NAME", help="node type")
    add("--repair-hours", type=float, metavar="H", help="failed nodes come back after H hours")
    add("--fault-tolerance", type=int, default=defaults.fault_tolerance, help="f")
    add("--global-batch", type=int, default=defaults.global_microbatches, help="samples per step")
    add("--costs", metavar="FILE", help="JSON object overriding cost constants")
    add("--out", required=True, metavar="PATH.json|PATH.csv", help="where the rows go")
    add("--workers", type=int, default=1, help="local processes (or local Ray CPUs)")
    add("--ray", action="store_true", help="run cells on a local Ray instance (needs the ray extra)")
    add("--ray-address", metavar="ADDR", help="run cells on the Ray cluster at ADDR")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    check_output_path(args.out, "--out", suffixes=(".json", ".csv"))
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    policies = POLICIES if args.policy == "all" else tuple(p.strip() for p in args.policy.split(","))
    base = SimulationConfig(
        hours=args.hours,
        hardware=args.hardware,
        policies=policies,
        repair_hours=args.repair_hours,
        fault_tolerance=args.fault_tolerance,
        global_microbatches=args.global_batch,
        costs=SimCosts.load(args.costs) if args.costs else SimCosts(),
    )
    grid = SweepGrid(
        models=args.models, nodes=args.nodes, fail_rates=args.fail_rates, seeds=tuple(range(args.seeds))
    )
    cells = grid.cells(base)  # NOTE: validates every cell before anything runs.
    quiet = args.quiet or not sys.stderr.isatty()
    if quiet:
        result = run_sweep(base, grid, workers=args.workers, use_ray=args.ray, ray_address=args.ray_address)
    else:
        columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("sweep", total=len(cells))
            result = run_sweep(
                base,
                grid,
                workers=args.workers,
                use_ray=args.ray,
                ray_address=args.ray_address,
                progress=lambda done, _total: bar.update(task, completed=done),
            )
    result.write(args.out)
    Console().print(f"wrote {len(result.rows)} rows ({len(cells)} cells) to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck sim sweep``.

    Args:
        argv: arguments after ``sweep``; ``None`` reads ``sys.argv[2:]``.

    Returns:
        0 on success; 2 on bad input (one line on stderr).
    """
    return run_command(build_parser(), _run, sys.argv[2:] if argv is None else argv)
