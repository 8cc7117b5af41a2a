"""``python -m oobleck.demo`` (``make demo``): plan at scale, then kill a node of a live job and recover.

Part 1 runs the planning core and the simulator on their embedded catalogue (GPT-3 175B on 32 H100
nodes losing one node; 24 h of random failures under every recovery policy): it launches nothing.
Part 2 starts a real job exactly as a user would, ``python -m oobleck.runtime.master --hostfile
examples/hosts.local4 --config <job>`` (four local one-slot agents, gloo on CPU, the tiny GPT-2 of
``examples/tiny_gpt2.yaml`` with ``fault_tolerance: 1``), SIGKILLs one agent's process group after a
chosen step, lets the survivors finish every step, and prints the measured recovery timeline next to
the planning core's prediction for the same failure.

Assumptions:
    * The repository's ``examples/`` folder sits next to the installed package (editable install,
      as ``make`` does); the run directory defaults to ``runs/demo-<timestamp>`` under the current
      directory (``runs/`` is git-ignored).
    * :func:`oobleck.viz.live.record_failure_run` bounds every wait and kills every process it
      started, so the demo leaves nothing behind on success, error or timeout.
    * Pipelines before and after the failure are recomputed with the runtime's own planner
      (``job_planner`` on the job's profile, ``max_nodes`` = hostfile size): plans are
      deterministic, so these are the plans the workers ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from oobleck.cli._common import ArgumentParser, new_parser, run_command
from oobleck.errors import ConfigError
from oobleck.planning.catalogue import resolve_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.sim import SimulationConfig, simulate
from oobleck.sim.report import results_table
from oobleck.viz.live import KILL_FILE, record_failure_run, write_job
from oobleck.viz.recovery import steady_step_s
from oobleck.viz.runs import METRICS_FILE, PHASES, RecordedRun, load_run

logger = logging.getLogger(__name__)

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_HOSTFILE = _EXAMPLES / "hosts.local4"
_BASE_JOB = _EXAMPLES / "tiny_gpt2.yaml"
_NODES = 4
"""Agents in ``hosts.local4``: node ids 0..3."""
_STEPS_AFTER_KILL = 5
"""Steps that must remain after ``--kill-after-step``: the kill lands a step or two late (the step rows
are polled), and the steady step time after recovery needs a step beyond the redone one."""
_STARTUP_TIMEOUT_S = 180.0
"""Bound on the job's start (four workers importing torch on a loaded 2-core machine take ~15 s)."""
_STEP_TIMEOUT_S = 1.0
"""Added to the bound per step (a step of the tiny model takes ~30 ms here)."""
_POLL_S = 0.2
_GIB = float(1 << 30)
_LOSS_ROWS_BEFORE, _LOSS_ROWS_AFTER = 2, 3
_EVENTS = ("failure detected", "plan ready", "groups rebuilt", "state transferred", "first step done")
"""What has happened when each of :data:`PHASES` ends, in the same order."""
_EXAMPLE = "python -m oobleck.demo --steps 40 --kill-after-step 20 --node 3 --run-dir runs/demo"


def build_parser() -> ArgumentParser:
    """The demo's flags; every one has a default, so ``make demo`` passes none."""
    parser = new_parser(
        "demo",
        description=(
            "Part 1: plan GPT-3 175B on 32 H100 nodes, reconfigure after one node fails, and simulate\n"
            "24 h of random failures under every recovery policy (nothing is launched).\n"
            "Part 2: run the tiny GPT-2 job on 4 local agents (f=1), SIGKILL one agent's process group\n"
            "mid-run, and print the measured recovery timeline next to the planning core's prediction."
        ),
        example=_EXAMPLE,
    )
    parser.prog = "python -m oobleck.demo"
    add = parser.add_argument
    add("--steps", type=int, default=40, metavar="N", help="training steps of the live job")
    kill_help = f"SIGKILL the node once step K is done, K <= steps-{_STEPS_AFTER_KILL} (default: steps // 2)"
    add("--kill-after-step", type=int, default=argparse.SUPPRESS, metavar="K", help=kill_help)
    add("--node", type=int, default=_NODES - 1, metavar="ID", help=f"node to kill, 0..{_NODES - 1}")
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
    if steps < 1 + _STEPS_AFTER_KILL:
        raise ConfigError(
            f"--steps must be >= {1 + _STEPS_AFTER_KILL} (steps on both sides of the kill), got {steps}"
        )
    kill = getattr(args, "kill_after_step", steps // 2)
    if not 1 <= kill <= steps - _STEPS_AFTER_KILL:
        raise ConfigError(
            f"--kill-after-step must be in 1..{steps - _STEPS_AFTER_KILL} for --steps {steps} "
            f"(steady steps before the kill and {_STEPS_AFTER_KILL} after it), got {kill}"
        )
    if not 0 <= node < _NODES:
        raise ConfigError(f"--node must be a node id of {_HOSTFILE.name}, 0..{_NODES - 1}, got {node}")
    run_dir = Path(getattr(args, "run_dir", None) or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    if (run_dir / METRICS_FILE).exists():
        raise ConfigError(f"--run-dir {run_dir} already holds a run ({METRICS_FILE}); pass a new folder")
    for path in (_HOSTFILE, _BASE_JOB):
        if not path.is_file():
            raise ConfigError(f"{path}: not found; run the demo from a checkout of the oobleck repository")
    return steps, kill, node, run_dir


def _run(args: argparse.Namespace) -> int:
    steps, kill_after, node, run_dir = check_flags(args)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 100)
    _print_at_scale(out)
    job_path = write_job(_BASE_JOB, run_dir / "job.yaml", fault_tolerance=1, steps=steps)
    out.print(
        f"\n[bold]2. Live[/]: {_NODES} local nodes (gloo, CPU), tiny GPT-2, f=1, {steps} steps; "
        f"node {node} SIGKILLed after step {kill_after}"
    )
    out.print(
        f"  python -m oobleck.runtime.master --hostfile {_shown(_HOSTFILE)} --config {_shown(job_path)} "
        f"--run-dir {_shown(run_dir)}",
        soft_wrap=True,
    )
    started = time.monotonic()
    with _Progress(run_dir, steps, Console(stderr=True, highlight=False)):
        record_failure_run(
            job_path,
            run_dir,
            hostfile=_HOSTFILE,
            kill_after_step=kill_after,
            node=node,
            timeout_s=_STARTUP_TIMEOUT_S + _STEP_TIMEOUT_S * steps,
        )
    job_s = time.monotonic() - started
    _print_timeline(out, load_run(run_dir), _job_planner(job_path), steps=steps, job_s=job_s)
    return 0


def _print_at_scale(out: Console) -> None:
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
        f"{_sizes(plan)} nodes, {plan.iteration_time_s:.1f} s/step"
    )
    out.print(
        f"  node 3 fails -> {len(change.plan.pipelines)} pipelines of {_sizes(change.plan)} nodes, "
        f"{len(change.transfers)} layer copies ({moved_gib:.0f} GiB), predicted recovery {predicted_s:.1f} s"
    )
    out.print("  24 h with random node failures, every recovery policy on the same failure trace:")
    out.print(results_table(simulate(SimulationConfig(nodes=32, fail_rate=0.01, seed=1))))


def _job_planner(job_path: Path) -> Planner:
    # NOTE: imported here: the engine pulls in torch and transformers, which part 1 never needs.
    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.engine import build_adapter, job_planner, job_profile

    job = load_job_config(job_path)
    return job_planner(job, job_profile(job, build_adapter(job.model)), _NODES)


def _print_timeline(out: Console, run: RecordedRun, planner: Planner, *, steps: int, job_s: float) -> None:
    if not run.failures or not run.recoveries or run.killed_at is None:
        raise ConfigError(
            f"{run.run_dir}: the job finished without losing a node; see {run.run_dir}/master.out"
        )
    failure, recovery = run.failures[0], run.recoveries[0]
    before = planner.plan(run.initial_nodes)
    after = planner.reconfigure(before, lost_nodes=failure.lost)
    predicted = planner.predict_recovery(after).to_dict()
    t_failure = recovery.t_failure if math.isfinite(recovery.t_failure) else failure.failure_at
    redone = recovery.step
    timeline = Table(
        title=f"Recovery timeline: node {_ids(failure.lost)} lost, step {redone} redone on the survivors",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for name in ("event", "phase", "ms", "ms from kill", "predicted ms*"):
        timeline.add_column(name, justify="left" if name in ("event", "phase") else "right")
    since_kill_s = t_failure - run.killed_at
    timeline.add_row(f"node {_ids(failure.lost)} killed (SIGKILL)", "", "", "0.0", "")
    timeline.add_row("failure seen by master", "", "", f"{since_kill_s * 1e3:.1f}", "")
    for phase, event in zip(PHASES, _EVENTS, strict=True):
        spent_s = recovery.phases_s.get(phase, 0.0)
        since_kill_s += spent_s
        timeline.add_row(
            event,
            phase,
            f"{spent_s * 1e3:.1f}",
            f"{since_kill_s * 1e3:.1f}",
            f"{predicted[phase] * 1e3:.1f}",
        )
    timeline.add_row(
        "total", "", f"{recovery.total_s * 1e3:.1f}", "", f"{predicted['total'] * 1e3:.1f}", style="bold"
    )
    out.print(timeline)
    out.print(_before_after(run, failure.generation, before, after.plan))
    out.print(_loss_table(run, failure.generation))
    numbers = sorted(step.step for step in run.steps)
    once = ", each once" if numbers == list(range(steps)) else ""
    how = "restarted from a checkpoint" if recovery.restart else "no restart, no checkpoint reload"
    out.print(f"{len(set(numbers))} of {steps} steps done{once}; survivors went on at step {redone}: {how}")
    out.print(
        f"job {job_s:.0f} s from launch to exit; run dir {_shown(run.run_dir)} (metrics.jsonl, agent logs)\n"
        "* Planner.predict_recovery with default constants (a large GPU cluster's); "
        "notebooks/03 calibrates them on this machine",
        soft_wrap=True,
    )


def _before_after(run: RecordedRun, generation: int, before: Plan, after: Plan) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("", "before", "after"):
        table.add_column(name, justify="left" if not name else "right")
    nodes = (run.initial_nodes, next(m.members for m in run.memberships if m.generation == generation))
    table.add_row("nodes", *(f"{len(ids)} ({_ids(ids)})" for ids in nodes))
    table.add_row("pipelines", *(f"{len(plan.pipelines)} ({_sizes(plan)} nodes)" for plan in (before, after)))
    table.add_row(
        "microbatches", *("/".join(str(p.microbatches) for p in plan.pipelines) for plan in (before, after))
    )
    # NOTE: the first step of each generation is warm-up or the recovery's first_step: not steady.
    step_s = (steady_step_s(run, generation=0), steady_step_s(run, generation=generation))
    samples = run.steps[0].samples
    table.add_row("step (median)", *(f"{seconds * 1e3:.1f} ms" for seconds in step_s))
    table.add_row("samples/s", *(f"{samples / seconds:.0f}" for seconds in step_s))
    return table


def _loss_table(run: RecordedRun, generation: int) -> Table:
    first_after = next(i for i, step in enumerate(run.steps) if step.generation >= generation)
    shown = run.steps[max(0, first_after - _LOSS_ROWS_BEFORE) : first_after + _LOSS_ROWS_AFTER]
    members = {m.generation: len(m.members) for m in run.memberships}
    table = Table(title="Loss around the failure: training carries on", box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("step", "generation", "nodes", "loss", "step ms"):
        table.add_column(name, justify="right")
    for step in shown:
        table.add_row(
            str(step.step),
            str(step.generation),
            str(members.get(step.generation, "?")),
            f"{step.loss:.4f}",
            f"{step.step_s * 1e3:.1f}",
            style="bold" if step is run.steps[first_after] else None,
        )
    return table


class _Progress:
    """Tails the run directory from a background thread and reports milestones on stderr.

    Only reads files; the job itself is driven by :func:`record_failure_run` on the caller's thread.
    Used as a context manager: leaving it stops the thread after one last read.
    """

    def __init__(self, run_dir: Path, steps: int, console: Console) -> None:
        self._run_dir, self._steps, self._console = run_dir, steps, console
        self._every = max(1, steps // 4)
        self._offset = 0
        self._announced: dict[str, bool] = {}
        self._members: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(_POLL_S):
                self._poll()
            self._poll()
        except (OSError, ValueError, KeyError, StopIteration) as error:
            # NOTE: progress lines are a courtesy; the job and the final timeline do not depend on them.
            logger.warning("progress display stopped: %r", error)

    def _say(self, message: str) -> None:
        self._console.print(f"demo: {message}", soft_wrap=True)

    def _poll(self) -> None:
        self._once("master.json", lambda m: f"master up at {m['address']}:{m['port']}")
        self._once("agents.json", self._agents)
        for row in self._new_rows():
            self._report(row)
        self._once(KILL_FILE, self._killed)

    def _once(self, name: str, message: Callable[[Any], str | None]) -> None:
        """Announce a file of the run directory once, when ``message`` finds it complete."""
        path = self._run_dir / name
        if self._announced.get(name) or not path.is_file():
            return
        try:
            text = message(json.loads(path.read_text()))
        except json.JSONDecodeError:
            return  # NOTE: still being written; read again on the next poll.
        if text is not None:
            self._announced[name] = True
            self._say(text)

    def _agents(self, rows: list[dict[str, Any]]) -> str | None:
        if len(rows) < _NODES:
            return None
        pids = ", ".join(str(row["agent_pid"]) for row in rows)
        return f"{len(rows)} agents started (pids {pids}); their workers import torch (~15 s here)"

    def _killed(self, kill: dict[str, Any]) -> str:
        agents = json.loads((self._run_dir / "agents.json").read_text())
        victim = next(row for row in agents if row["node"] == kill["node"])
        workers = ", ".join(str(pid) for pid in victim.get("worker_pids", ()))
        return f"killing node {kill['node']}: SIGKILL to agent pid {victim['agent_pid']}, workers {workers}"

    def _new_rows(self) -> list[dict[str, Any]]:
        path = self._run_dir / METRICS_FILE
        if not path.is_file():
            return []
        with path.open("rb") as metrics:
            metrics.seek(self._offset)
            data = metrics.read()
        # NOTE: the runtime may be halfway through a line; keep it for the next poll.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    def _report(self, row: dict[str, Any]) -> None:
        event = row.get("event", "step")
        if event == "membership":
            self._members[int(row["generation"])] = len(row["members"])
            if not row.get("lost"):
                self._say(f"job started on nodes {_ids(row['members'])}")
                return
            self._once(KILL_FILE, self._killed)
            reason = row.get("reason", "node lost")
            self._say(f"master: {reason}; generation {row['generation']} on nodes {_ids(row['members'])}")
        elif event == "recovery":
            total_ms = sum(row["phases_s"].values()) * 1e3
            self._say(f"recovered in {total_ms:.0f} ms: step {row['step']} redone on the survivors")
        elif event == "step" and (row["step"] % self._every == 0 or row["step"] == self._steps - 1):
            nodes = self._members.get(int(row.get("generation", 0)), "?")
            self._say(f"step {row['step']}/{self._steps - 1}  loss {row['loss']:.3f}  on {nodes} nodes")
        elif event == "job_completed":
            self._say(f"master: job completed ({row.get('reason', '')})")


def _sizes(plan: Plan) -> str:
    return "+".join(str(len(pipeline.nodes)) for pipeline in plan.pipelines)


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(node) for node in ids)


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies under it (shorter to read and copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
