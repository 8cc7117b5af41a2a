"""The live demo's report: the measured recovery timeline next to the planning core's prediction.

Assumptions:
    * The run lost a node once: its first failure and first recovery are the ones reported.
    * ``planner`` is the planner the job's workers used, so the plans it computes for the recorded
      memberships are the plans that ran.
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table

from oobleck.demo.copies import first_recovery_rows, kilobytes, print_copies
from oobleck.demo.text import ids, shown, sizes
from oobleck.errors import ConfigError
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.viz.recovery import steady_step_s
from oobleck.viz.runs import PHASES, RecordedRun

_LOSS_ROWS_BEFORE, _LOSS_ROWS_AFTER = 2, 3
_EVENTS = ("failure detected", "plan ready", "groups rebuilt", "state transferred", "first step done")
"""What has happened when each of :data:`PHASES` ends, in the same order."""


def print_timeline(out: Console, run: RecordedRun, planner: Planner, *, steps: int, job_s: float) -> None:
    """Print the recovery timeline, the plans before and after, and the loss around the failure.

    Args:
        out: where the tables go.
        run: the recorded run directory of the live job.
        planner: the job's planner (recomputes the plans and predicts the recovery).
        steps: training steps the job was asked for.
        job_s: seconds from launch to exit.

    Raises:
        ConfigError: the run recorded no failure, recovery or kill.
    """
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
        title=f"Recovery timeline: node {ids(failure.lost)} lost, step {redone} redone on the survivors",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for name in ("event", "phase", "ms", "ms from kill", "predicted ms*"):
        timeline.add_column(name, justify="left" if name in ("event", "phase") else "right")
    since_kill_s = t_failure - run.killed_at
    recovery_row, copies = first_recovery_rows(run.run_dir)
    moved = f"{len(copies)} layers, {kilobytes(sum(int(c['bytes']) for c in copies))}"
    timeline.add_row(f"node {ids(failure.lost)} killed (SIGKILL)", "", "", "0.0", "")
    timeline.add_row("failure seen by master", "", "", f"{since_kill_s * 1e3:.1f}", "")
    for phase, event in zip(PHASES, _EVENTS, strict=True):
        spent_s = recovery.phases_s.get(phase, 0.0)
        since_kill_s += spent_s
        timeline.add_row(
            f"{event} ({moved})" if phase == "transfer_state" else event,
            phase,
            f"{spent_s * 1e3:.1f}",
            f"{since_kill_s * 1e3:.1f}",
            f"{predicted[phase] * 1e3:.1f}",
        )
    timeline.add_row(
        "total", "", f"{recovery.total_s * 1e3:.1f}", "", f"{predicted['total'] * 1e3:.1f}", style="bold"
    )
    out.print(timeline)
    print_copies(out, recovery_row, copies)
    out.print(_before_after(run, failure.generation, before, after.plan))
    out.print(_loss_table(run, failure.generation))
    numbers = sorted(step.step for step in run.steps)
    once = ", each once" if numbers == list(range(steps)) else ""
    how = "restarted from a checkpoint" if recovery.restart else "no restart, no checkpoint reload"
    out.print(f"{len(set(numbers))} of {steps} steps done{once}; survivors went on at step {redone}: {how}")
    out.print(
        f"job {job_s:.0f} s from launch to exit; run dir {shown(run.run_dir)} (metrics.jsonl, agent logs)\n"
        "* Planner.predict_recovery with default constants (a large GPU cluster's); "
        "notebooks/03 calibrates them on this machine",
        soft_wrap=True,
    )


def _before_after(run: RecordedRun, generation: int, before: Plan, after: Plan) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("", "before", "after"):
        table.add_column(name, justify="left" if not name else "right")
    nodes = (run.initial_nodes, next(m.members for m in run.memberships if m.generation == generation))
    table.add_row("nodes", *(f"{len(members)} ({ids(members)})" for members in nodes))
    table.add_row("pipelines", *(f"{len(plan.pipelines)} ({sizes(plan)} nodes)" for plan in (before, after)))
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
    shown_steps = run.steps[max(0, first_after - _LOSS_ROWS_BEFORE) : first_after + _LOSS_ROWS_AFTER]
    members = {m.generation: len(m.members) for m in run.memberships}
    table = Table(title="Loss around the failure: training carries on", box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("step", "generation", "nodes", "loss", "step ms"):
        table.add_column(name, justify="right")
    for step in shown_steps:
        table.add_row(
            str(step.step),
            str(step.generation),
            str(members.get(step.generation, "?")),
            f"{step.loss:.4f}",
            f"{step.step_s * 1e3:.1f}",
            style="bold" if step is run.steps[first_after] else None,
        )
    return table
