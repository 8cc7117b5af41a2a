"""How the simulator's wall time grows with cluster size: N nodes x 30 simulated days, all policies.

Scenario: GPT-3 175B on H100 nodes, 2.7e-4 failures per node per hour (the rate Meta's published
cluster MTTFs imply), failed nodes repaired after 12 h, f = 1, a global batch of 4 microbatches per
node (so every size has enough microbatches for its pipelines). Goals (issue 14): 2048 nodes x 30
days, all policies, <= 5 s; 16,384 nodes x 30 days, all policies, <= 30 s on this machine. Events
scale with failures (whole checkpoint cycles are one phase), never with steps or checkpoints, and
re-planning after a loss is incremental, so wall time should grow about linearly with nodes (the
number of failures grows linearly with nodes, each costing O(pipeline x layers)). The last lines
print the growth exponent between consecutive sizes: ~1 is linear, ~2 means per-event O(N) work.

Usage: python benchmarks/sim_scale.py [--quick] [--sizes 32,512,2048,16384] [--days 30]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

from oobleck.sim import POLICIES, SimulationConfig, simulate

GOALS_S = {2048: 5.0, 16384: 30.0}
"""Wall-time goals per cluster size (all policies, 30 days)."""
FAIL_RATE = 2.7e-4
REPAIR_HOURS = 12.0
MODEL = "gpt3-175b"
HARDWARE = "h100"
MICROBATCHES_PER_NODE = 4
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 32 and 512 nodes, 7 days")
    parser.add_argument("--sizes", default="32,512,2048,16384", help="comma-separated node counts")
    parser.add_argument("--days", type=float, default=30.0, help="simulated days")
    args = parser.parse_args()
    sizes = [32, 512] if args.quick else [int(size) for size in args.sizes.split(",")]
    days = 7.0 if args.quick else args.days
    scenario = f"{FAIL_RATE:g} failures/node/h, repair {REPAIR_HOURS:g} h, seed {SEED}"
    print(f"{MODEL} on {HARDWARE}, {days:g} days, {scenario}")
    header = f"{'nodes':>6} {'failures':>8} {'events':>7} {'total_s':>8} " + " ".join(
        f"{p:>10}" for p in POLICIES
    )
    print(header)
    walls: dict[int, float] = {}
    for nodes in sizes:
        config = SimulationConfig(
            nodes=nodes,
            fail_rate=FAIL_RATE,
            repair_hours=REPAIR_HOURS,
            hours=days * 24,
            model=MODEL,
            hardware=HARDWARE,
            global_microbatches=MICROBATCHES_PER_NODE * nodes,
            seed=SEED,
        )
        started = time.perf_counter()
        result = simulate(config)
        walls[nodes] = time.perf_counter() - started
        per_policy = " ".join(f"{row.wall_s:>10.2f}" for row in result.results)
        events = len(result.trace.events)
        print(
            f"{nodes:>6} {result.trace.num_failures:>8} {events:>7} {walls[nodes]:>8.2f} {per_policy}",
            flush=True,
        )
    for goal_nodes, goal_s in GOALS_S.items():
        if goal_nodes in walls:
            ratio = walls[goal_nodes] / goal_s
            verdict = "met" if ratio <= 1 else "MISSED"
            print(
                f"goal: {goal_nodes} nodes in {walls[goal_nodes]:.2f} s = "
                f"{ratio:.2f} x the {goal_s:g} s goal ({verdict})"
            )
    ordered = sorted(walls)
    for small, large in itertools.pairwise(ordered):
        exponent = math.log(walls[large] / walls[small]) / math.log(large / small)
        print(
            f"{small} -> {large} nodes: wall time x{walls[large] / walls[small]:.1f} (~ nodes^{exponent:.2f})"
        )


if __name__ == "__main__":
    main()
