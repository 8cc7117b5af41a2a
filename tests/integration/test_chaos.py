"""Seeded chaos: random kills and stops of agents, workers and the master; the job must not notice.

Issue #10 acceptance. A 200-step job of the custom example model with ``fault_tolerance: 2`` on
6 one-slot agents gets, in a seeded random order at seeded random steps: a SIGKILL of an agent's
process group, a SIGKILL of one worker under a live agent, a SIGSTOP of an agent's group long
enough to be declared dead, a short SIGSTOP of one worker (a stall, not a failure), and one
SIGKILL of the master followed by ``oobleck master --resume``. The job must complete with the
per-step losses of a fault-free run (the single-process standalone worker, which the engine tests
show equal to any pipeline layout) and an exact sample ledger. The schedule and the timings are
printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import (
    Run,
    agents,
    assert_ledger_exact,
    assert_losses_match,
    kill_run,
    run_standalone,
    write_hosts,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("OOBLECK_CHAOS_SEED", "2026"))
STEPS = 200
AGENTS = 6
KINDS = ("kill_agent", "kill_worker", "stop_agent", "stall_worker", "kill_master")
GAP_STEPS = 25
"""Steps between two events. A lost node stops every step until it is recovered, so reaching the
next event's step proves the recovery done; a killed master stops no step (steps never touch the
store), and its resumed successor has these steps to come back before the next fault."""
STOP_AGENT_S = 4.0
"""A stopped agent group stays stopped this long: past the heartbeat bound, so it is declared dead."""
STALL_WORKER_S = 1.0


@dataclass
class Event:
    """One scheduled fault and what happened when it fired."""

    kind: str
    step: int
    node: int = -1
    fired_at_step: int = -1
    t_s: float = 0.0


def schedule(rng: random.Random) -> list[Event]:
    """Seeded order of the five fault kinds at seeded steps, ``GAP_STEPS`` apart, in [20, 154]."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    start = rng.randrange(20, 40)
    return [Event(kind, start + i * GAP_STEPS + rng.randrange(0, 15)) for i, kind in enumerate(kinds)]


def _steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return -1
    lines = path.read_text().splitlines()
    return max((json.loads(x).get("step", -1) for x in lines if '"loss"' in x), default=-1)


def _master(argv: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OOBLECK_TOKEN"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oobleck.runtime.master", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _alive_rows(run_dir: Path, lost: set[int]) -> list[dict]:
    return [a for a in agents(run_dir) if a["alive"] and a["node"] not in lost and a["worker_pids"]]


def _fire(event: Event, run_dir: Path, rng: random.Random, lost: set[int]) -> None:
    rows = _alive_rows(run_dir, lost)
    row = rng.choice(rows)
    event.node = row["node"]
    if event.kind == "kill_agent":
        os.killpg(row["agent_pid"], signal.SIGKILL)
        lost.add(row["node"])
    elif event.kind == "kill_worker":
        os.kill(row["worker_pids"][0], signal.SIGKILL)
        lost.add(row["node"])
    elif event.kind == "stop_agent":
        os.killpg(row["agent_pid"], signal.SIGSTOP)
        time.sleep(STOP_AGENT_S)
        os.killpg(row["agent_pid"], signal.SIGCONT)
        lost.add(row["node"])
    elif event.kind == "stall_worker":
        os.kill(row["worker_pids"][0], signal.SIGSTOP)
        time.sleep(STALL_WORKER_S)
        os.kill(row["worker_pids"][0], signal.SIGCONT)


@pytest.mark.timeout(600)
def test_seeded_chaos_keeps_losses_and_ledger(tmp_path):
    """Under seeded kills and stops of agents, workers and the master (resumed), a 200-step f=2 job
    on 6 agents completes with the fault-free losses and an exact sample ledger."""
    rng = random.Random(SEED)
    events = schedule(rng)
    config = write_job(tmp_path, steps=STEPS, f=2)
    t0 = time.monotonic()
    # NOTE: one process holds one pipeline, so its twin job has f=0; f changes no loss or sample.
    reference = run_standalone(tmp_path / "reference", write_job(tmp_path, steps=STEPS, f=0))
    t_reference = time.monotonic() - t0
    run_dir = tmp_path / "chaos"
    hosts = write_hosts(tmp_path, AGENTS)
    masters = [
        _master(
            ["--hostfile", str(hosts), "--config", str(config), "--run-dir", str(run_dir)],
            tmp_path / "m0.log",
        )
    ]
    lost: set[int] = set()
    deadline = time.monotonic() + 480
    t_start = time.monotonic()
    try:
        for event in events:
            while _steps_done(run_dir) < event.step:
                assert masters[-1].poll() is None, (tmp_path / f"m{len(masters) - 1}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"step {event.step} never reached"
                time.sleep(0.02)
            event.fired_at_step, event.t_s = _steps_done(run_dir), time.monotonic() - t_start
            if event.kind == "kill_master":
                masters[-1].send_signal(signal.SIGKILL)
                masters[-1].wait(10)
                masters.append(_master(["--resume", str(run_dir)], tmp_path / f"m{len(masters)}.log"))
            else:
                _fire(event, run_dir, rng, lost)
        rc = masters[-1].wait(max(1.0, deadline - time.monotonic()))
    finally:
        kill_run(run_dir, *masters)
    t_run = time.monotonic() - t_start
    log = "".join((tmp_path / f"m{i}.log").read_text() for i in range(len(masters)))
    print(f"\nchaos seed {SEED}: reference {t_reference:.1f} s, chaos run {t_run:.1f} s")
    for event in events:
        print(f"  t={event.t_s:6.1f} s  step {event.fired_at_step:3d}  {event.kind:12s} node {event.node}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = Run(rc, run_dir, None, records, log)
    for recovery in run.events("recovery"):
        print(f"  recovery gen {recovery.get('generation')}: {recovery.get('phases_s')}")
    assert rc == 0, log[-4000:]
    assert sorted({n for m in run.events("membership") for n in m["lost"]}) == sorted(lost), log[-3000:]
    assert_losses_match(run, reference)
    in_flight = tuple(s for e in events for s in range(e.fired_at_step, e.fired_at_step + 3))
    assert_ledger_exact(run, reference, in_flight=in_flight)
