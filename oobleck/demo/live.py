"""Part 2 of the demo, live: a real four-node job whose pipelines span nodes loses a node and recovers.

The job is ``examples/tiny_gpt2_deep.yaml`` on ``examples/hosts.local4``: planned for 2 MB per
device, each pipeline needs 2 nodes, so four agents run pipelines [0, 1] and [2, 3]. Killing node 0
(the default) leaves three nodes for one pipeline of the 3-node template, [1, 2, 3], and the
survivors copy the missing layer with its optimizer state (node 1 receives layer 0 from node 2).

Assumptions:
    * ``examples/`` of the repository sits next to the installed package (editable install).
    * :func:`oobleck.viz.live.record_failure_run` bounds every wait and kills every process it
      started; this module only adds a progress reader and the final report.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from oobleck.demo.progress import Progress
from oobleck.demo.text import shown
from oobleck.demo.timeline import print_timeline
from oobleck.planning.planner import Planner
from oobleck.viz.live import record_failure_run, write_job
from oobleck.viz.runs import load_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOSTFILE = EXAMPLES / "hosts.local4"
BASE_JOB = EXAMPLES / "tiny_gpt2_deep.yaml"
NODES = 4
"""Agents in ``hosts.local4``: node ids 0..3."""
KILLED_NODE = 0
"""The default node to kill: the first stage of [0, 1]; its loss changes the template and copies a layer
(killing node 3 instead re-forms [2, 0, 1] and copies nothing: the planner keeps layers in place)."""
STEPS_AFTER_KILL = 5
"""Steps that must remain after ``--kill-after-step``: the kill lands a step or two late (the step rows
are polled), and the steady step time after recovery needs a step beyond the redone one."""
_STARTUP_TIMEOUT_S = 180.0
"""Bound on the job's start (four workers importing torch on a loaded 2-core machine take ~20 s)."""
_STEP_TIMEOUT_S = 1.0
"""Added to the bound per step (a step of the tiny model takes ~30 ms here)."""


def run_live(out: Console, *, steps: int, kill_after: int, node: int, run_dir: Path) -> None:
    """Run the deep tiny GPT-2 job on the four local agents, kill ``node`` and print the recovery report.

    Progress lines go to stderr while the job runs; the report goes to ``out`` once it has ended.

    Args:
        out: where the command line and the report go.
        steps: training steps of the job.
        kill_after: SIGKILL ``node`` once this step is done.
        node: node id to kill, ``0 .. NODES-1``.
        run_dir: new folder for the job's files.

    Raises:
        OobleckError: the job failed, timed out, or finished without losing a node.
    """
    job_path = write_job(BASE_JOB, run_dir / "job.yaml", fault_tolerance=1, steps=steps)
    out.print(
        f"\n[bold]2. Live[/]: {NODES} local nodes (gloo, CPU), tiny GPT-2 in pipelines of 2-3 nodes "
        f"(2 MB per device), f=1, {steps} steps; node {node} SIGKILLed after step {kill_after}"
    )
    out.print(
        f"  python -m oobleck.runtime.master --hostfile {shown(HOSTFILE)} --config {shown(job_path)} "
        f"--run-dir {shown(run_dir)}",
        soft_wrap=True,
    )
    started = time.monotonic()
    with Progress(run_dir, steps, NODES, Console(stderr=True, highlight=False)):
        record_failure_run(
            job_path,
            run_dir,
            hostfile=HOSTFILE,
            kill_after_step=kill_after,
            node=node,
            timeout_s=_STARTUP_TIMEOUT_S + _STEP_TIMEOUT_S * steps,
        )
    job_s = time.monotonic() - started
    print_timeline(out, load_run(run_dir), _job_planner(job_path), steps=steps, job_s=job_s)


def _job_planner(job_path: Path) -> Planner:
    # NOTE: imported here: the engine pulls in torch and transformers, which part 1 never needs.
    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.engine import build_adapter, job_planner, job_profile

    job = load_job_config(job_path)
    return job_planner(job, job_profile(job, build_adapter(job.model)), NODES)
