"""Record a real run with a node killed mid-run: the measurement side of notebook 03.

The job is run by the runtime's own command line (``python -m oobleck.runtime.master``) in a child
process, exactly as a user would start it; this module only watches ``metrics.jsonl`` and, once
the chosen step has completed, kills one agent's whole process group with SIGKILL (a node that
vanishes without a word: the TCP-disconnect failure of the cost model). Nothing here imports the
runtime, so the notebooks keep the simulator and the runtime apart.

Assumptions:
    * The master writes ``agents.json`` (node, ``agent_pid``, ``worker_pids``) and the agents it
      launches lead their own process group, so killing that group takes exactly one node down.
    * Every wait is bounded; on any error or timeout the master's process group is killed, so no
      process outlives the call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from oobleck.errors import ConfigError, OobleckError

logger = logging.getLogger(__name__)

_POLL_S = 0.05
KILL_FILE = "kill.json"
"""Written into the run directory: ``{"node": id, "t": wall-clock time of the SIGKILL}``."""


def record_failure_run(
    config: str | Path,
    run_dir: str | Path,
    *,
    hostfile: str | Path,
    kill_after_step: int,
    node: int | None = None,
    timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Run a job on local agents, kill one node after a given step, and wait for the job to finish.

    Args:
        config: Job YAML (its ``fault_tolerance`` must allow the loss).
        run_dir: Output folder; must not hold an earlier run (metrics are appended).
        hostfile: Agents to start (e.g. ``examples/hosts.local4``).
        kill_after_step: Kill once a step row with this step number (or later) is written.
        node: Node id to kill; default the highest node id.
        timeout_s: Bound on the whole run.
        env: Extra environment for the master, its agents and workers (e.g. the profile cache).

    Returns:
        ``run_dir``, ready for :func:`oobleck.viz.runs.load_run`; its ``kill.json`` records the node
        killed and the wall-clock time of the kill (the true start of the failure).

    Raises:
        OobleckError: ``run_dir`` already holds metrics, the job ended before the kill, the job
            failed, or it did not finish within ``timeout_s``.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        raise OobleckError(f"{metrics} exists; give record_failure_run a fresh run directory")
    command = [sys.executable, "-m", "oobleck.runtime.master", "--hostfile", str(hostfile)]
    command += ["--config", str(config), "--run-dir", str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with (run_dir / "master.out").open("w") as log:
        master = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            _wait_for_step(master, metrics, kill_after_step, deadline)
            _kill_node(run_dir, node)
            code = master.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise OobleckError(f"the job in {run_dir} did not finish within {timeout_s:g} s") from None
        finally:
            if master.poll() is None:
                os.killpg(master.pid, signal.SIGKILL)
                master.wait()
    if code != 0:
        raise OobleckError(f"the job failed (master exit code {code}); see {run_dir}/master.out")
    return run_dir


def record_scenarios(
    config: str | Path, folder: str | Path, scenarios: Mapping[str, tuple[int, int, int]]
) -> None:
    """Record one failure run per scenario into ``folder/<name>`` (:func:`record_failure_run`).

    Args:
        config: Job YAML.
        folder: Parent of the run folders; gets a ``hosts.local<N>`` file per cluster size.
        scenarios: Run name -> (one-slot local agents, node killed, kill after this step).
    """
    folder = Path(folder)
    for name, (agents, node, step) in scenarios.items():
        hosts = folder / f"hosts.local{agents}"
        hosts.write_text("localhost slots=1\n" * agents)
        record_failure_run(config, folder / name, hostfile=hosts, kill_after_step=step, node=node)


def in_rounds(scenarios: Mapping[str, tuple[tuple[int, int, int], int]]) -> dict[str, tuple[int, int, int]]:
    """Name each scenario's repeats ``<name>-<i>`` and order them in rounds, for :func:`record_scenarios`.

    Round ``i`` records every scenario's ``i``-th repeat: a shared machine's load drifts over the
    minutes a recording takes, and recorded in blocks (every calibration run first) the runs of one
    scenario would all see one minute's load and the others another's.

    Args:
        scenarios: Name -> ((agents, node killed, kill after this step), repeats).

    Returns:
        Run name -> (agents, node killed, kill after this step), in recording order.
    """
    rounds = max((repeats for _, repeats in scenarios.values()), default=0)
    return {
        f"{name}-{i}": scenario
        for i in range(1, rounds + 1)
        for name, (scenario, repeats) in scenarios.items()
        if i <= repeats
    }


def _wait_for_step(master: subprocess.Popen[bytes], metrics: Path, step: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if metrics.is_file() and _last_step(metrics) >= step:
            return
        if master.poll() is not None:
            raise OobleckError(f"the job ended (exit code {master.returncode}) before step {step} completed")
        time.sleep(_POLL_S)
    raise subprocess.TimeoutExpired(master.args, 0)


def _last_step(metrics: Path) -> int:
    last = -1
    for line in metrics.read_text().splitlines():
        # NOTE: the last line may be half written; only complete JSON rows count.
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "event" not in row and "step" in row:
            last = max(last, int(row["step"]))
    return last


def _kill_node(run_dir: Path, node: int | None) -> None:
    agents = [row for row in json.loads((run_dir / "agents.json").read_text()) if row.get("alive", True)]
    victim = (
        max(agents, key=lambda row: row["node"])
        if node is None
        else next((row for row in agents if row["node"] == node), None)
    )
    if victim is None:
        raise OobleckError(f"node {node} is not a live agent in {run_dir}/agents.json")
    pid = int(victim["agent_pid"])
    killed_at = time.time()
    try:
        leads_its_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        node_id = victim["node"]
        raise OobleckError(f"node {node_id} (agent pid {pid}) exited before it could be killed") from None
    if leads_its_group:
        os.killpg(pid, signal.SIGKILL)
    else:
        # NOTE: an agent sharing our process group must not take us down with it: kill it and its
        # workers one by one instead.
        for target in (pid, *victim.get("worker_pids", ())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(target), signal.SIGKILL)
    (run_dir / KILL_FILE).write_text(json.dumps({"node": victim["node"], "t": killed_at}) + "\n")
    logger.info("killed node %d (agent pid %d)", victim["node"], pid)


def write_job(base: str | Path, path: str | Path, **overrides: Any) -> Path:
    """Copy a job YAML with some top-level keys replaced (e.g. more steps, ``fault_tolerance=1``).

    Args:
        base: An existing job file (e.g. ``examples/tiny_gpt2.yaml``).
        path: Where to write the variant (folders are created).
        **overrides: Top-level keys and their new values.

    Returns:
        ``path``.

    Raises:
        ConfigError: ``base`` is missing or not a YAML mapping.
    """
    base, path = Path(base), Path(path)
    try:
        job = yaml.safe_load(base.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{base}: cannot read the job file ({error})") from None
    if not isinstance(job, dict):
        raise ConfigError(f"{base}: expected a YAML mapping of job keys, got {type(job).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**job, **overrides}, sort_keys=False))
    return path
