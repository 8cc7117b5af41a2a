"""Planner speed for GPT-3 175B on 8-GPU nodes: templates + instantiation, the whole CLI, re-planning.

Scenario: GPT-3 175B (96 blocks) on 32, 128, 1024, 4096 and 16,384 nodes of 8 GPUs, fault tolerance 1,
a global batch of 2 samples per GPU (microbatch 1), so that every pipeline has at least one microbatch
per stage.
Covers: analytic profile + ``Planner`` construction (all templates) + ``plan()``;
``oobleck.cli.plan.main(["--json", ...])`` in-process (profile, templates, plan, JSON);
``Planner.reconfigure`` after losing one node, the median of repeats, each loss from the same plan
(spread over the cluster; the plan index is built by an untimed first loss and rerooted between
losses); and at 1024 nodes the CLI as a fresh process, interpreter start and imports included.
Re-plans are timed in CPU seconds of this process (``time.process_time``), so that other work on a
shared machine does not count; the wall-clock median is printed next to it.

The "peer" of each figure is the project's goal: the whole CLI at 1024 nodes within 1 s, a re-plan
within 1 ms at 16,384 nodes. Each figure is printed with its ratio to the goal (below 1.00 meets it),
and the growth exponent ``log(t2 / t1) / log(n2 / n1)`` between consecutive sizes (0: independent of
N, 1: linear).

Usage: ``python benchmarks/planner.py [--quick] [--hardware h100|a100-80] [--repeats N]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from oobleck.cli.plan import main as plan_main
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner

MODEL = "gpt3-175b"
NODE_COUNTS = (32, 128, 1024, 4096, 16384)
QUICK_NODE_COUNTS = (32, 128)
FAULT_TOLERANCE = 1
MICROBATCH_SIZE = 1
SAMPLES_PER_GPU = 2
CLI_GOAL_S = 1.0
REPLAN_GOAL_S = 0.001
PROCESS_NODES = 1024
ONE_REPEAT_FROM = 4096
"""From this many nodes on, planning and the CLI (seconds each) are timed once."""


def _median_s(
    action: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    samples = []
    for _ in range(repeats):
        started = clock()
        action()
        samples.append(clock() - started)
    return statistics.median(samples)


def _cli_argv(hardware: str, nodes: int) -> list[str]:
    return [
        "--json",
        "--model",
        MODEL,
        "--hardware",
        hardware,
        "--nodes",
        str(nodes),
        "--fault-tolerance",
        str(FAULT_TOLERANCE),
        "--global-batch",
        str(SAMPLES_PER_GPU * nodes * get_hardware(hardware).gpus_per_node),
        "--microbatch-size",
        str(MICROBATCH_SIZE),
    ]


def _run_cli(argv: Sequence[str]) -> dict[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = plan_main(list(argv))
    if status != 0:
        raise RuntimeError(f"oobleck plan {' '.join(argv)} exited {status}")
    return json.loads(out.getvalue())


def measure(hardware_name: str, nodes: int, repeats: int) -> dict[str, float]:
    """Time planning, the CLI and one-loss re-planning for ``nodes`` nodes.

    Args:
        hardware_name: catalogue hardware with 8-GPU nodes.
        nodes: cluster size.
        repeats: repetitions whose median is reported (the re-plan uses 10x as many).

    Returns:
        Seconds for ``plan_s`` (profile + templates + instantiation), ``cli_s``, ``index_s`` (the
        first re-plan, which builds the plan index), ``replan_s`` (CPU) and ``replan_wall_s``, and
        the plan's ``pipelines``, ``spares`` and ``templates`` counts.
    """
    hardware = get_hardware(hardware_name)
    global_microbatches = SAMPLES_PER_GPU * nodes * hardware.gpus_per_node // MICROBATCH_SIZE
    node_ids = tuple(range(nodes))

    def plan_from_scratch() -> tuple[Planner, Plan]:
        # NOTE: a fresh profile object each time, so no per-profile cache of the cost model is reused.
        planner = Planner(
            analytic_profile(MODEL, hardware, microbatch_size=MICROBATCH_SIZE),
            hardware,
            fault_tolerance=FAULT_TOLERANCE,
            global_microbatches=global_microbatches,
            microbatch_size=MICROBATCH_SIZE,
            max_nodes=nodes,
        )
        return planner, planner.plan(node_ids)

    slow_repeats = 1 if nodes >= ONE_REPEAT_FROM else repeats
    plan_s = _median_s(plan_from_scratch, slow_repeats)
    argv = _cli_argv(hardware_name, nodes)
    cli_s = _median_s(lambda: _run_cli(argv), slow_repeats)
    planner, plan = plan_from_scratch()
    started = time.perf_counter()
    planner.reconfigure(plan, lost_nodes=(nodes // 2,))
    index_s = time.perf_counter() - started
    # NOTE: lose a different node each time (spread over the cluster) so no single lucky case is timed.
    victims = [(k * 7919) % nodes for k in range(10 * repeats)]
    replan, replan_wall = [0.0] * len(victims), [0.0] * len(victims)
    for index, victim in enumerate(victims):
        started_wall, started = time.perf_counter(), time.process_time()
        planner.reconfigure(plan, lost_nodes=(victim,))
        replan[index] = time.process_time() - started
        replan_wall[index] = time.perf_counter() - started_wall
    return {
        "plan_s": plan_s,
        "cli_s": cli_s,
        "index_s": index_s,
        "replan_s": statistics.median(replan),
        "replan_wall_s": statistics.median(replan_wall),
        "pipelines": len(plan.pipelines),
        "spares": len(plan.spare_nodes),
        "templates": len(planner.templates),
    }


def measure_process(hardware_name: str, nodes: int) -> float:
    """Wall seconds of ``python -m oobleck.plan --json ...`` as a fresh process."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "oobleck.plan", *_cli_argv(hardware_name, nodes)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.perf_counter() - started


def _exponent(
    previous: tuple[int, dict[str, float]] | None, nodes: int, row: dict[str, float], key: str
) -> str:
    """``log(t / t_prev) / log(n / n_prev)`` as text, or ``-`` for the first size."""
    if previous is None or previous[1][key] <= 0 or row[key] <= 0:
        return "-"
    return f"{math.log(row[key] / previous[1][key]) / math.log(nodes / previous[0]):.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the benchmark table; returns 0."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 and 128 nodes only, one repeat (CI smoke)")
    parser.add_argument("--hardware", default="h100", help="8-GPU node type (default: h100)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (default: 3)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    counts = QUICK_NODE_COUNTS if args.quick else NODE_COUNTS
    print(
        f"{MODEL} on {args.hardware} nodes, f={FAULT_TOLERANCE}, {SAMPLES_PER_GPU} samples/GPU, "
        f"microbatch {MICROBATCH_SIZE}; median of {repeats} (re-plan: {10 * repeats})"
    )
    print(
        f"peer = the goal: whole CLI <= {CLI_GOAL_S:.0f} s, re-plan <= {REPLAN_GOAL_S * 1e3:.0f} ms (CPU); "
        "exp = growth exponent from the previous size"
    )
    header = (
        f"{'nodes':>6} {'templates':>9} {'pipelines':>9} {'spares':>6} {'plan s':>8} {'exp':>5} "
        f"{'CLI s':>8} {'CLI/peer':>9} {'index s':>8} {'re-plan ms':>11} {'exp':>5} {'re-plan/peer':>13} "
        f"{'wall ms':>8}"
    )
    print(header)
    previous: tuple[int, dict[str, float]] | None = None
    for nodes in counts:
        row = measure(args.hardware, nodes, repeats)
        plan_exp = _exponent(previous, nodes, row, "plan_s")
        replan_exp = _exponent(previous, nodes, row, "replan_s")
        print(
            f"{nodes:>6} {row['templates']:>9} {row['pipelines']:>9} {row['spares']:>6} "
            f"{row['plan_s']:>8.3f} {plan_exp:>5} {row['cli_s']:>8.3f} {row['cli_s'] / CLI_GOAL_S:>8.2f}x "
            f"{row['index_s']:>8.3f} "
            f"{row['replan_s'] * 1e3:>11.3f} {replan_exp:>5} {row['replan_s'] / REPLAN_GOAL_S:>12.2f}x "
            f"{row['replan_wall_s'] * 1e3:>8.3f}"
        )
        previous = (nodes, row)
    if not args.quick:
        process_s = measure_process(args.hardware, PROCESS_NODES)
        print(
            f"CLI as a fresh process at {PROCESS_NODES} nodes (interpreter + imports included): "
            f"{process_s:.3f} s = {process_s / CLI_GOAL_S:.2f}x peer"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
