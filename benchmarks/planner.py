"""Planner speed for GPT-3 175B on 8-GPU nodes: templates + instantiation, the whole CLI, re-planning.

Scenario: GPT-3 175B (96 blocks) on 32, 128, 1024 and 4096 nodes of 8 GPUs, fault tolerance 1, a global
batch of 2 samples per GPU (microbatch 1), so that every pipeline has at least one microbatch per stage.
Covers: analytic profile + ``Planner`` construction (all templates) + ``plan()``;
``oobleck.cli.plan.main(["--json", ...])`` in-process (profile, templates, plan, JSON);
``Planner.reconfigure`` after losing one node, the median of repeats; and at 1024 nodes the CLI as a
fresh process, interpreter start and imports included.

The "peer" of each figure is the project's goal: the whole CLI at 1024 nodes within 1 s, a re-plan
within 10 ms. Each figure is printed with its ratio to the goal (below 1.00 meets it).

Usage: ``python benchmarks/planner.py [--quick] [--hardware h100|a100-80] [--repeats N]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from oobleck.cli.plan import main as plan_main
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner

MODEL = "gpt3-175b"
NODE_COUNTS = (32, 128, 1024, 4096)
QUICK_NODE_COUNTS = (32, 128)
FAULT_TOLERANCE = 1
MICROBATCH_SIZE = 1
SAMPLES_PER_GPU = 2
CLI_GOAL_S = 1.0
REPLAN_GOAL_S = 0.010
PROCESS_NODES = 1024


def _median_s(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
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
        Seconds for ``plan_s`` (profile + templates + instantiation), ``cli_s`` and ``replan_s``, and
        the plan's ``pipelines`` and ``templates`` counts.
    """
    hardware = get_hardware(hardware_name)
    global_microbatches = SAMPLES_PER_GPU * nodes * hardware.gpus_per_node // MICROBATCH_SIZE
    node_ids = tuple(range(nodes))

    def plan_from_scratch() -> tuple[Planner, object]:
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

    plan_s = _median_s(plan_from_scratch, repeats)
    argv = _cli_argv(hardware_name, nodes)
    cli_s = _median_s(lambda: _run_cli(argv), repeats)
    planner, plan = plan_from_scratch()
    # NOTE: lose a different node each time (spread over the cluster) so no single lucky case is timed.
    victims = [(k * 7919) % nodes for k in range(10 * repeats)]
    replan = [0.0] * len(victims)
    for index, victim in enumerate(victims):
        started = time.perf_counter()
        planner.reconfigure(plan, lost_nodes=(victim,))
        replan[index] = time.perf_counter() - started
    return {
        "plan_s": plan_s,
        "cli_s": cli_s,
        "replan_s": statistics.median(replan),
        "pipelines": len(plan.pipelines),  # type: ignore[attr-defined]  # NOTE: plan is a Plan
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
    print(f"peer = the goal: whole CLI <= {CLI_GOAL_S:.0f} s, re-plan <= {REPLAN_GOAL_S * 1e3:.0f} ms")
    header = (
        f"{'nodes':>6} {'templates':>9} {'pipelines':>9} {'plan s':>8} {'CLI s':>8} {'CLI/peer':>9} "
        f"{'re-plan ms':>11} {'re-plan/peer':>13}"
    )
    print(header)
    for nodes in counts:
        row = measure(args.hardware, nodes, repeats)
        print(
            f"{nodes:>6} {row['templates']:>9} {row['pipelines']:>9} {row['plan_s']:>8.3f} "
            f"{row['cli_s']:>8.3f} {row['cli_s'] / CLI_GOAL_S:>8.2f}x "
            f"{row['replan_s'] * 1e3:>11.2f} {row['replan_s'] / REPLAN_GOAL_S:>12.2f}x"
        )
    if not args.quick:
        process_s = measure_process(args.hardware, PROCESS_NODES)
        print(
            f"CLI as a fresh process at {PROCESS_NODES} nodes (interpreter + imports included): "
            f"{process_s:.3f} s = {process_s / CLI_GOAL_S:.2f}x peer"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
