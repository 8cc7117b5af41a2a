"""Part 1 of the demo, on paper: plan, reconfigure and simulate a large job without launching anything.

Assumptions:
    * The catalogue's analytic GPT-3 175B profile on H100 nodes stands in for a measured one; the
      numbers are predictions of the planning core and the simulator, not measurements.
"""

from __future__ import annotations

from rich.console import Console

from oobleck.demo.text import sizes
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.planner import Planner
from oobleck.sim import SimulationConfig, simulate
from oobleck.sim.report import results_table

_GIB = float(1 << 30)


def print_at_scale(out: Console) -> None:
    """Print GPT-3 175B's plan on 32 H100 nodes, its reconfiguration after node 3 fails, and 24 h of
    simulated random failures under every recovery policy.

    Args:
        out: where the lines and the results table go.
    """
    hardware = get_hardware("h100")
    profile = resolve_profile("gpt3-175b", hardware, microbatch_size=1)
    planner = Planner(
        profile, hardware, fault_tolerance=1, global_microbatches=1024, microbatch_size=1, max_nodes=32
    )
    plan = planner.plan(range(32))
    change = planner.reconfigure(plan, lost_nodes=[3])
    moved_gib = sum(transfer.bytes for transfer in change.transfers) / _GIB
    predicted_s = planner.predict_recovery(change).total_s
    out.print("[bold]1. At scale, on paper[/]: planning core and simulator (nothing is launched)")
    out.print(
        f"  gpt3-175b on 32 x h100, f=1, batch 1024: {len(plan.pipelines)} pipelines of "
        f"{sizes(plan)} nodes, {plan.iteration_time_s:.1f} s/step"
    )
    out.print(
        f"  node 3 fails -> {len(change.plan.pipelines)} pipelines of {sizes(change.plan)} nodes, "
        f"{len(change.transfers)} layer copies ({moved_gib:.0f} GiB), predicted recovery {predicted_s:.1f} s"
    )
    out.print("  24 h with random node failures, every recovery policy on the same failure trace:")
    out.print(results_table(simulate(SimulationConfig(nodes=32, fail_rate=0.01, seed=1))))
