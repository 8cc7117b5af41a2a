"""``oobleck sim`` / ``python -m oobleck.sim``: compare fault-tolerance policies on a simulated cluster.

A thin shell over :func:`oobleck.sim.simulate`: flags become a :class:`~oobleck.sim.SimulationConfig`,
the result becomes a rich table (stdout), and optionally a JSON file and a PNG plot.

Assumptions:
    * The progress bar goes to stderr and only when stderr is a terminal and ``--quiet`` is absent,
      so piped output and tests see the table alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from oobleck.cli._common import new_parser, run_command
from oobleck.errors import ConfigError
from oobleck.planning.hardware import HARDWARE
from oobleck.sim import SimulationConfig, SimulationResult, simulate
from oobleck.sim.config import MAX_NODES, POLICIES
from oobleck.sim.costs import SimCosts
from oobleck.sim.report import (
    breakdown_table,
    check_output_path,
    plot,
    results_table,
    seeds_table,
    write_json,
)
from oobleck.sim.seeds import SeedsResult, simulate_seeds

_EXAMPLE = (
    "python -m oobleck.sim --nodes 32 --fail-rate 0.01 --seeds 5\n"
    "  python -m oobleck.sim --nodes 31 --trace 1h.csv --policy oobleck,varuna --json out.json\n"
    "  (the published Oobleck traces name node1..node30, so they need --nodes 31)\n"
    "  python -m oobleck.sim sweep --help   (grids of runs, on Ray or a process pool)"
)
_PIPE_WIDTH = 160


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck sim``; defaults are those of :class:`SimulationConfig`."""
    defaults = SimulationConfig()
    parser = new_parser(
        "sim",
        description=(
            "Simulate training on a cluster whose nodes fail, once per policy on the same failure trace "
            "(common random numbers), and compare how much training each policy gets done. Defaults: "
            f"{defaults.model} on {defaults.nodes} x {defaults.hardware} nodes for {defaults.hours:g} h, "
            f"all policies ({', '.join(POLICIES)}), seed {defaults.seed}."
        ),
        example=_EXAMPLE,
    )
    add = parser.add_argument
    add(
        "--nodes",
        type=int,
        default=defaults.nodes,
        help=f"nodes in the cluster (ids node0..node<N-1>), at most {MAX_NODES:,}",
    )
    add("--fail-rate", type=float, default=defaults.fail_rate, help="node failures per node per hour")
    add("--hours", type=float, default=defaults.hours, help="simulated training hours")
    add(
        "--model", default=defaults.model, metavar="NAME|profile.json", help="catalogue model or profile JSON"
    )
    add("--hardware", default=defaults.hardware, metavar="NAME", help=f"node type: {', '.join(HARDWARE)}")
    add(
        "--policy",
        default="all",
        metavar="NAMES",
        help=f"comma-separated policies from {', '.join(POLICIES)}, or all",
    )
    add(
        "--trace",
        metavar="FILE",
        help="replay a 'time_ms,add|remove,node<k>' CSV trace instead of --fail-rate",
    )
    add(
        "--repair-hours",
        type=float,
        metavar="H",
        help="failed nodes come back after H hours; None: never",
    )
    add(
        "--repair-distribution",
        choices=("fixed", "exponential"),
        default=defaults.repair_distribution,
        help="repair time: exactly --repair-hours, or exponential with that mean",
    )
    add("--rack-size", type=int, default=defaults.rack_size, help="nodes per rack; 0 disables rack failures")
    add(
        "--rack-fail-rate",
        type=float,
        default=defaults.rack_fail_rate,
        help="rack failures per rack per hour",
    )
    add("--seed", type=int, default=defaults.seed, help="seed of the failure trace (the first, with --seeds)")
    add(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="run K seeds (--seed .. --seed+K-1), all policies on the same K traces; mean and 95%% interval",
    )
    add(
        "--mtbf-hours",
        type=float,
        metavar="H",
        help="cluster MTBF checkpoint periods are planned for (default: from --fail-rate/--rack-fail-rate)",
    )
    add("--allow-empty-trace", action="store_true", help="accept a --trace without any membership change")
    add(
        "--remove-every-minutes",
        type=float,
        metavar="M",
        help="the Oobleck paper's synthetic trace: remove one node every M minutes (seeded order)",
    )
    add(
        "--remove-until-nodes",
        type=int,
        default=defaults.remove_until_nodes,
        help="with --remove-every-minutes: stop removing when this many nodes remain",
    )
    add(
        "--fault-tolerance",
        type=int,
        default=defaults.fault_tolerance,
        help="f: simultaneous losses oobleck survives",
    )
    add(
        "--global-batch",
        type=int,
        default=defaults.global_microbatches * defaults.microbatch_size,
        help="samples per step (a multiple of --microbatch-size)",
    )
    add("--microbatch-size", type=int, default=defaults.microbatch_size, help="samples per microbatch")
    add("--costs", metavar="FILE", help="JSON object overriding cost constants (see oobleck.sim.costs)")
    add("--json", metavar="PATH", help="write config, per-policy results and timelines as JSON")
    add("--plot", metavar="PATH.png", help="write throughput-over-time and time-breakdown plots")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Turn parsed flags into a validated config.

    Raises:
        ConfigError: a flag's value is invalid; the message names the flag.
    """
    policies = (
        POLICIES if args.policy == "all" else tuple(p.strip() for p in args.policy.split(",") if p.strip())
    )
    if args.microbatch_size <= 0:
        raise ConfigError(f"--microbatch-size must be > 0, got {args.microbatch_size}")
    if args.global_batch <= 0 or args.global_batch % args.microbatch_size:
        raise ConfigError(
            f"--global-batch must be a positive multiple of --microbatch-size={args.microbatch_size}, "
            f"got {args.global_batch}"
        )
    return SimulationConfig(
        nodes=args.nodes,
        fail_rate=args.fail_rate,
        hours=args.hours,
        model=args.model,
        hardware=args.hardware,
        policies=policies,
        trace=args.trace,
        allow_empty_trace=args.allow_empty_trace,
        remove_every_minutes=args.remove_every_minutes,
        remove_until_nodes=args.remove_until_nodes,
        mtbf_hours=args.mtbf_hours,
        repair_hours=args.repair_hours,
        repair_distribution=args.repair_distribution,
        rack_size=args.rack_size,
        rack_fail_rate=args.rack_fail_rate,
        seed=args.seed,
        fault_tolerance=args.fault_tolerance,
        global_microbatches=args.global_batch // args.microbatch_size,
        microbatch_size=args.microbatch_size,
        costs=SimCosts.load(args.costs) if args.costs else SimCosts(),
    )


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # NOTE: every output path is checked before simulating, so a typo never costs a whole run.
    if args.json:
        check_output_path(args.json, "--json", suffixes=(".json",))
    if args.plot:
        check_output_path(args.plot, "--plot", suffixes=(".png", ".pdf", ".svg"))
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
    quiet = args.quiet or not sys.stderr.isatty()
    if args.seeds > 1:
        seeds = list(range(config.seed, config.seed + args.seeds))
        many = simulate_seeds(config, seeds, run=simulate if quiet else _simulate_with_progress)
        console.print(seeds_table(many))
        console.print(f"seeds {seeds[0]}..{seeds[-1]}; simulated in {sum(r.wall_s for r in many.runs):.2f} s")
        result = many.runs[0]
        document: SeedsResult | SimulationResult = many
    else:
        result = simulate(config) if quiet else _simulate_with_progress(config)
        console.print(results_table(result))
        console.print(breakdown_table(result))
        console.print(f"seed {config.seed}; simulated in {result.wall_s:.2f} s")
        document = result
    if args.json:
        write_json(document, args.json)
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        console.print(f"wrote {args.plot}" + (f" (seed {result.seed})" if args.seeds > 1 else ""))
    return 0


def _simulate_with_progress(config: SimulationConfig) -> SimulationResult:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        tasks: dict[str, TaskID] = {name: progress.add_task(name, total=1.0) for name in config.policies}

        def update(name: str, fraction: float) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=1.0)
            progress.update(tasks[name], completed=fraction)

        return simulate(config, progress=update)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck sim``.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success; 2 on bad input (one line on stderr naming the flag or file:line).
        ``sweep`` as the first argument runs :mod:`oobleck.cli.sim_sweep` instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from oobleck.cli.sim_sweep import main as sweep_main

        return sweep_main(argv[1:])
    return run_command(build_parser(), _run, argv)
