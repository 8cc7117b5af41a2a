"""``oobleck plan`` / ``python -m oobleck.plan``: inspect templates, a plan and a reconfiguration.

The command is a thin shell over :class:`oobleck.planning.planner.Planner`: it resolves the model and
hardware, checks the flags, plans for ``--nodes`` nodes and optionally reconfigures after ``--fail``
and ``--join``. It prints readable tables, or with ``--json`` one JSON object whose keys other tools
(the notebooks, the benchmarks) rely on.

Assumptions:
    * Node ids are ``0 .. nodes-1``; joined nodes get ``nodes .. nodes+join-1``.
    * Templates are generated up to ``nodes + join`` nodes so that a grow after a join finds one ready.
    * With ``--config`` the job file replaces the model/hardware/f/batch flags (:mod:`._plan_job`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from oobleck.cli import _plan_job
from oobleck.cli._common import at_least, new_parser, run_command
from oobleck.errors import ConfigError
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.hardware import HARDWARE, get_hardware
from oobleck.planning.instantiate import guaranteed_range
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile

_EXAMPLE = (
    "python -m oobleck.plan --model gpt3-175b --hardware h100 --nodes 128 --fault-tolerance 2 \\\n"
    "      --global-batch 2048 --fail 3,17 --join 2"
)
_GIB = float(1 << 30)
#: Stage layer ranges shown per template row before the middle is elided.
_MAX_RANGES_SHOWN = 6
#: Pipelines of a table row whose node ids are listed one by one rather than merged.
_MAX_PIPELINES_SPELLED = 3
#: Console width when stdout is a file or a pipe.
_PIPE_WIDTH = 120


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck plan``; defaults give a small but realistic example."""
    parser = new_parser(
        "plan",
        description=(
            "Plan fault-tolerant pipeline-parallel training: the pipeline template for every node\n"
            "count, the plan for --nodes nodes, and with --fail/--join the reconfigured plan, the\n"
            "state transfers and the predicted recovery time."
        ),
        example=_EXAMPLE,
    )
    parser.add_argument(
        "--model",
        default="gpt3-175b",
        metavar="NAME|profile.json",
        help="catalogue model (e.g. gpt2-xl, gpt3-175b, llama2-70b) or a profile JSON file",
    )
    parser.add_argument(
        "--hardware",
        default="h100",
        metavar="NAME",
        help=f"node type, one of: {', '.join(HARDWARE)} (GPU nodes have 8 GPUs, cpu has 1)",
    )
    parser.add_argument(
        "--nodes", type=int, default=32, metavar="N", help="nodes in the cluster (ids 0..N-1)"
    )
    parser.add_argument(
        "--fault-tolerance", type=int, default=1, metavar="F", help="f: node failures the plan must survive"
    )
    parser.add_argument(
        "--global-batch",
        type=int,
        default=1024,
        metavar="B",
        help="samples per optimizer step (never changes)",
    )
    parser.add_argument("--microbatch-size", type=int, default=1, metavar="M", help="samples per microbatch")
    parser.add_argument(
        "--fail", default="", metavar="IDS", help="comma-separated node ids to fail, e.g. 3,17; empty: none"
    )
    parser.add_argument("--join", type=int, default=0, metavar="K", help="new nodes that join (ids N..N+K-1)")
    parser.add_argument(
        "--max-gpus-per-stage",
        type=int,
        default=None,
        metavar="G",
        help="cap on GPUs (tensor-parallel degree) per stage; default: up to a whole node",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="JOB.yaml",
        help="plan this training job as its workers would (model, hardware, f, batch from the file)",
    )
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        metavar="G",
        help="with --config: devices (agent slots) per node; default: the job's, 1 on cpu",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck plan``.

    Args:
        argv: flags without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on bad input (one line on stderr).
    """
    return run_command(build_parser(), _run, argv)


def parse_node_ids(text: str, num_nodes: int) -> tuple[int, ...]:
    """Parse ``--fail`` ("3,17") into node ids of a cluster of ``num_nodes`` nodes.

    Args:
        text: comma-separated integers; empty means none.
        num_nodes: cluster size; valid ids are ``0 .. num_nodes-1``.

    Returns:
        The ids, sorted.

    Raises:
        ConfigError: a token is not an integer, an id is outside the cluster, or is repeated.
    """
    ids: list[int] = []
    for token in (part.strip() for part in text.split(",") if part.strip()):
        try:
            node = int(token)
        except ValueError:
            raise ConfigError(f"--fail: {token!r} is not a node id; give integers like 3,17") from None
        if not 0 <= node < num_nodes:
            raise ConfigError(f"--fail: node {node} is not in the cluster; node ids are 0..{num_nodes - 1}")
        if node in ids:
            raise ConfigError(f"--fail: node {node} is listed twice; list each node once")
        ids.append(node)
    return tuple(sorted(ids))


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """Plan (and reconfigure) for parsed flags and return the ``--json`` object.

    Args:
        args: the namespace of :func:`build_parser`.

    Returns:
        ``templates``, ``plan``, ``min_nodes_per_pipeline``, ``guaranteed_range`` and the inputs;
        with ``--fail``/``--join`` also ``reconfigured``, ``transfers`` and ``predicted_recovery_s``.

    Raises:
        ConfigError: a flag is out of range or inconsistent with the others.
        PlanningError: no plan exists (the model fits no pipeline, or too few nodes survive).
    """
    nodes = at_least("--nodes", args.nodes, 1)
    join = at_least("--join", args.join, 0)
    if args.config is not None:
        return _report(args, nodes, join, _job_planning(args, nodes, join))
    if args.gpus_per_node is not None:
        raise ConfigError("--gpus-per-node: only used with --config; give the node type with --hardware")
    fault_tolerance = at_least("--fault-tolerance", args.fault_tolerance, 0)
    global_batch = at_least("--global-batch", args.global_batch, 1)
    microbatch_size = at_least("--microbatch-size", args.microbatch_size, 1)
    if args.max_gpus_per_stage is not None:
        at_least("--max-gpus-per-stage", args.max_gpus_per_stage, 1)
    if global_batch % microbatch_size:
        raise ConfigError(
            f"--global-batch {global_batch} is not divisible by --microbatch-size {microbatch_size}; "
            f"use a multiple such as {global_batch - global_batch % microbatch_size or microbatch_size}"
        )
    parse_node_ids(args.fail, nodes)  # NOTE: bad ids are reported before the model is resolved.
    hardware = get_hardware(args.hardware)
    profile = resolve_profile(args.model, hardware, microbatch_size=microbatch_size)
    planner = Planner(
        profile,
        hardware,
        fault_tolerance=fault_tolerance,
        global_microbatches=global_batch // microbatch_size,
        microbatch_size=microbatch_size,
        max_nodes=nodes + join,
        max_gpus_per_stage=args.max_gpus_per_stage,
    )
    low, _ = guaranteed_range(planner.templates, fault_tolerance, nodes)
    if nodes < low:
        raise ConfigError(
            f"fault_tolerance={fault_tolerance} needs >= (f+1)*n0 = {low} nodes, got {nodes} "
            f"(n0={planner.min_nodes} {hardware.name} nodes hold {profile.model}); "
            "lower --fault-tolerance or add nodes"
        )
    planning = _plan_job.JobPlanning(
        profile, hardware, planner, fault_tolerance, global_batch, microbatch_size
    )
    return _report(args, nodes, join, planning)


def _job_planning(args: argparse.Namespace, nodes: int, join: int) -> _plan_job.JobPlanning:
    _plan_job.refuse_job_flags(args, build_parser())
    parse_node_ids(args.fail, nodes)
    return _plan_job.job_planning(args.config, nodes, join, args.gpus_per_node)


def _report(
    args: argparse.Namespace, nodes: int, join: int, planning: _plan_job.JobPlanning
) -> dict[str, Any]:
    """The ``--json`` object of a checked planning setup (from flags or a job file)."""
    profile, hardware, planner = planning.profile, planning.hardware, planning.planner
    fault_tolerance, global_batch = planning.fault_tolerance, planning.global_batch
    microbatch_size = planning.microbatch_size
    failed = parse_node_ids(args.fail, nodes)
    low, high = guaranteed_range(planner.templates, fault_tolerance, nodes)
    plan = planner.plan(tuple(range(nodes)))
    report: dict[str, Any] = {
        "model": profile.model,
        "hardware": hardware.name,
        "nodes": nodes,
        "gpus_per_node": hardware.gpus_per_node,
        "fault_tolerance": fault_tolerance,
        "global_batch": global_batch,
        "microbatch_size": microbatch_size,
        "memory_limit_bytes": hardware.usable_memory_bytes,
        "min_nodes_per_pipeline": planner.min_nodes,
        "guaranteed_range": [low, high],
        "templates": [template.to_dict() for template in planner.templates],
        "plan": _plan_dict(plan, profile),
    }
    if args.config is not None:
        report["config"] = args.config
    if failed or join:
        joined = tuple(range(nodes, nodes + join))
        change = planner.reconfigure(plan, lost_nodes=failed, joined_nodes=joined)
        prediction = planner.predict_recovery(change)
        report |= {
            "lost_nodes": list(failed),
            "joined_nodes": list(joined),
            "reconfigured": _plan_dict(change.plan, profile),
            "transfers": [transfer.to_dict() for transfer in change.transfers],
            "predicted_recovery_s": prediction.to_dict(),
        }
    return report


def _plan_dict(plan: Plan, profile: ModelProfile) -> dict[str, Any]:
    tokens = plan.samples_per_s * profile.sequence_length if profile.sequence_length else None
    return plan.to_dict() | {"tokens_per_s": tokens}


def _run(args: argparse.Namespace) -> int:
    report = build_report(args)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        # NOTE: rich falls back to 80 columns when stdout is not a terminal; the tables need more.
        _print_tables(report, Console(file=sys.stdout, width=None if sys.stdout.isatty() else _PIPE_WIDTH))
    return 0


def _node_ranges(nodes: Sequence[int]) -> str:
    """Compact sorted ids: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    ordered = sorted(nodes)
    start = prev = ordered[0] if ordered else 0
    for node in [*ordered[1:], None]:
        if node is not None and node == prev + 1:
            prev = node
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if node is not None:
            start = prev = node
    return ",".join(parts) if ordered else "-"


def _layer_ranges(stages: Sequence[dict[str, Any]]) -> str:
    ranges = [
        str(first) if first == end - 1 else f"{first}-{end - 1}"
        for first, end in (s["layers"] for s in stages)
    ]
    if len(ranges) > _MAX_RANGES_SHOWN:
        ranges = [*ranges[:3], "…", *ranges[-2:]]
    return " ".join(ranges)


def _gpus(stages: Sequence[dict[str, Any]]) -> str:
    """Run-length GPUs per stage: ``[8, 8, 8, 4]`` -> ``"8x3 4"``."""
    runs: list[list[int]] = []
    for stage in stages:
        if runs and runs[-1][0] == stage["gpus"]:
            runs[-1][1] += 1
        else:
            runs.append([stage["gpus"], 1])
    return " ".join(f"{gpus}x{count}" if count > 1 else str(gpus) for gpus, count in runs)


def _print_tables(report: dict[str, Any], console: Console) -> None:
    limit_gib = report["memory_limit_bytes"] / _GIB
    console.print(
        f"[bold]{report['model']}[/] on {report['nodes']} x {report['hardware']} "
        f"({report['gpus_per_node']} GPUs/node), f={report['fault_tolerance']}, "
        f"global batch {report['global_batch']} = {report['plan']['global_microbatches']} microbatches "
        f"x {report['microbatch_size']}"
    )
    used: dict[int, int] = {}
    for pipeline in report["plan"]["pipelines"]:
        used[len(pipeline["nodes"])] = used.get(len(pipeline["nodes"]), 0) + 1
    templates = Table(title=f"Pipeline templates (memory limit {limit_gib:.1f} GiB/GPU)")
    columns = ("nodes", "stages", "GPUs/stage", "layers per stage", "peak GiB/GPU", "iter s @S mb", "used")
    for column in columns:
        templates.add_column(column, justify="left" if column.startswith(("layers", "GPUs")) else "right")
    for template in report["templates"]:
        stages = template["stages"]
        templates.add_row(
            str(template["nodes"]),
            str(len(stages)),
            _gpus(stages),
            _layer_ranges(stages),
            f"{max(s['memory_bytes'] for s in stages) / _GIB:.1f}",
            f"{template['iteration_time_s']:.3f}",
            str(used.get(template["nodes"], "")),
        )
    console.print(templates)
    _print_plan(console, "Plan", report["plan"])
    _plan_job.print_stage_memory(console, report["plan"], report["memory_limit_bytes"])
    low, high = report["guaranteed_range"]
    console.print(
        f"n0 = {report['min_nodes_per_pipeline']} nodes per pipeline; "
        f"f={report['fault_tolerance']} guaranteed for {low}..{high} nodes"
    )
    if "reconfigured" not in report:
        return
    console.print(
        f"\n[bold]Reconfiguration[/]: lost {_node_ranges(report['lost_nodes'])}, "
        f"joined {_node_ranges(report['joined_nodes'])}"
    )
    _print_plan(console, "Reconfigured plan", report["reconfigured"])
    transfers = report["transfers"]
    total = sum(t["bytes"] for t in transfers)
    console.print(
        f"State transfers: {len(transfers)} layer copies, {total / _GIB:.2f} GiB, "
        f"from {len({t['src_node'] for t in transfers})} sources "
        f"to {len({t['dst_node'] for t in transfers})} destinations"
    )
    recovery = Table(title="Predicted recovery")
    recovery.add_column("phase")
    recovery.add_column("seconds", justify="right")
    for phase, seconds in report["predicted_recovery_s"].items():
        recovery.add_row(phase, f"{seconds:.3f}")
    console.print(recovery)


def _print_plan(console: Console, title: str, plan: dict[str, Any]) -> None:
    """One row per run of consecutive pipelines with the same shape and share of the batch."""
    table = Table(title=title)
    columns = ("pipelines", "node ids", "nodes each", "stages", "layers per stage", "microbatches", "iter s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("node ids", "layers per stage") else "right")
    groups: list[list[tuple[int, dict[str, Any]]]] = []
    for index, pipeline in enumerate(plan["pipelines"]):
        if groups and _same_shape(groups[-1][-1][1], pipeline):
            groups[-1].append((index, pipeline))
        else:
            groups.append([(index, pipeline)])
    for group in groups:
        first = group[0][1]
        table.add_row(
            _node_ranges([index for index, _ in group]),
            _group_nodes([pipeline["nodes"] for _, pipeline in group]),
            str(len(first["nodes"])),
            str(len(first["stages"])),
            _layer_ranges(first["stages"]),
            str(first["microbatches"]),
            f"{first['iteration_time_s']:.3f}",
        )
    console.print(table)
    tokens = f", {plan['tokens_per_s']:,.0f} tokens/s" if plan["tokens_per_s"] else ""
    console.print(
        f"{title}: {len(plan['pipelines'])} pipelines, step {plan['iteration_time_s']:.3f} s, "
        f"{plan['samples_per_s']:,.1f} samples/s{tokens}"
    )
    spares = plan["spare_nodes"]
    if spares:
        console.print(
            f"{title}: {len(spares)} hot spare nodes ({_node_ranges(spares)}) left idle because using "
            "them is infeasible or slower; a loss takes a spare first"
        )


def _group_nodes(members: Sequence[Sequence[int]]) -> str:
    """Node ids of each pipeline of a group, or of the whole group when it has many pipelines."""
    if len(members) <= _MAX_PIPELINES_SPELLED:
        return " | ".join(_node_ranges(nodes) for nodes in members)
    return _node_ranges([node for nodes in members for node in nodes])


def _same_shape(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return left["microbatches"] == right["microbatches"] and [s["layers"] for s in left["stages"]] == [
        s["layers"] for s in right["stages"]
    ]
