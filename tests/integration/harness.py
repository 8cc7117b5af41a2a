"""Harness of the elastic end-to-end tests: run a real master with its agents, act on it, read what it left.

Each run starts the master in its own session, so every agent and worker it launches can be killed
by process group; :func:`run_master` kills all of them afterwards (by the pids in agents.json and the
master's pid), so no process outlives a test. Tests compare a run's per-step losses and sample
ledger with a fault-free run of the same job (:func:`assert_losses_match`, :func:`assert_ledger_exact`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oobleck.runtime.control.agent import job_entrypoint
from oobleck.runtime.control.master_config import MasterConfig
from tests.integration import preloaded

JOB = """\
model: tiny-gpt2
data:
  source: pydoc
  sequence_length: 32
  ledger: true
global_batch: 16
microbatch_size: 2
steps: {steps}
optim:
  lr: 0.003
  warmup_steps: 2
  min_lr: 0.0003
  weight_decay: 0.01
  grad_clip: 1.0
  exact_accumulation: true  # float64 sums: recovered losses equal the fault-free bits
seed: 1234
fault_tolerance: {f}
checkpoint:
  every_steps: {every}
hardware: cpu
profile: analytic
"""

LOADED_MISSED_HEARTBEATS = 10
"""``--missed-heartbeats`` of a test master whose test is not about silence: 5 s, not the product's
1.5 s. CI runs two multi-agent tests at once on 2 cores, and there a live agent's heartbeats have
twice gone unread for 1.5 s (a node lost before a job started; a second node lost after a killed
one), which fails a test about something else. Tests of a loss by silence pass
:data:`PRODUCT_MISSED_HEARTBEATS`."""
PRODUCT_MISSED_HEARTBEATS: int = next(
    f.default for f in dataclasses.fields(MasterConfig) if f.name == "missed_heartbeats"
)
"""The master's own default: 1.5 s of silence loses a node."""


CUSTOM_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "custom_model" / "train.py"
"""The user-script model of ``examples/custom_model`` (``oobleck.api``; torch only, no transformers)."""
MODEL_LINES = {
    "tiny-gpt2": "model: tiny-gpt2",
    "custom": f"model: {{arch: custom, name: byte-transformer}}\nentrypoint: {CUSTOM_SCRIPT}",
}
"""The ``model:`` line(s) of :data:`JOB` for each model a test may ask :func:`write_job` for."""


def write_job(folder: Path, *, steps: int = 20, f: int = 1, every: int = 0, model: str = "custom") -> Path:
    """Write the harness's job YAML (:data:`JOB`) for ``model`` and return its path.

    The default is the custom example model, run by its own script as each worker: the control-plane
    tests (kills, stops, joins, restarts, hostile clients) need a model with layers, not HF's, and a
    worker that does not import transformers starts on about a third less CPU (4-agent run: 26 vs 39
    CPU-s). Tests of the HF adapters pass ``model="tiny-gpt2"``.
    """
    path = folder / f"job_s{steps}_f{f}_c{every}_{model}.yaml"
    path.write_text(
        JOB.format(steps=steps, f=f, every=every).replace(MODEL_LINES["tiny-gpt2"], MODEL_LINES[model], 1)
    )
    return path


def write_hosts(folder: Path, agents: int, slots: int = 1) -> Path:
    """Write a hostfile of ``agents`` localhost agents of ``slots`` workers each."""
    path = folder / (f"hosts{agents}" if slots == 1 else f"hosts{agents}x{slots}")
    path.write_text(f"localhost slots={slots}\n" * agents)
    return path


@dataclass
class Run:
    """What a finished run left behind."""

    rc: int
    run_dir: Path
    t_action: float | None
    records: list[dict] = field(default_factory=list)
    master_log: str = ""

    @property
    def losses(self) -> dict[int, float]:
        """Loss per step (the last record of a step wins)."""
        return {r["step"]: r["loss"] for r in self.records if "loss" in r and "event" not in r}

    def events(self, name: str) -> list[dict]:
        """Records with ``event == name``."""
        return [r for r in self.records if r.get("event") == name]

    def ledger(self) -> dict[int, list[int]]:
        """The sample ids each step trained on, over every node: the lines of the newest generation
        that logged the step. A node that finished its part of a step and then died leaves a line
        for it, but when the survivors redo that step in the next generation, theirs is the step."""
        entries = [
            json.loads(line)
            for file in sorted((self.run_dir / "ledger").glob("node*.jsonl"))
            for line in file.read_text().splitlines()
        ]
        newest: dict[int, int] = {}
        for entry in entries:
            newest[entry["step"]] = max(newest.get(entry["step"], -1), entry["generation"])
        per_step: dict[int, list[int]] = {}
        for entry in entries:
            if entry["generation"] == newest[entry["step"]]:
                per_step.setdefault(entry["step"], []).extend(entry["sample_ids"])
        return per_step


def _steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return -1
    # NOTE: only complete lines: a worker may be half-way through appending the last one.
    lines = path.read_text().split("\n")[:-1]
    steps = [json.loads(x).get("step", -1) for x in lines if '"loss"' in x]
    return max(steps, default=-1)


def agents(run_dir: Path) -> list[dict]:
    """The rows of agents.json."""
    return json.loads((run_dir / "agents.json").read_text())


def run_master(
    run_dir: Path,
    hostfile: Path,
    config: Path,
    *,
    at_step: int | None = None,
    action: Callable[[Path], None] | None = None,
    timeout_s: float = 240.0,
    extra_env: dict[str, str] | None = None,
    register_timeout_s: float = 120.0,
    master_args: tuple[str, ...] = (),
    missed_heartbeats: int = LOADED_MISSED_HEARTBEATS,
) -> Run:
    """Run a one-shot master; call ``action(run_dir)`` after step ``at_step``; clean up every process.

    ``register_timeout_s`` bounds agent start-up until every worker is ready (raise it for runs of
    many workers: each imports torch, which takes minutes of wall time on a loaded 2-core machine).
    ``master_args``: more ``oobleck master`` flags. ``missed_heartbeats``: the silence bound in
    heartbeat intervals (see :data:`LOADED_MISSED_HEARTBEATS`).
    """
    env = {**os.environ, **(extra_env or {})}
    env.pop("OOBLECK_TOKEN", None)
    log = run_dir.parent / f"{run_dir.name}.master.log"
    with log.open("w") as err:
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oobleck.runtime.master",
                "--hostfile",
                str(hostfile),
                "--config",
                str(config),
                "--run-dir",
                str(run_dir),
                "--register-timeout-s",
                str(register_timeout_s),
                "--missed-heartbeats",
                str(missed_heartbeats),
                *master_args,
            ],
            env=env,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    t_action = None
    deadline = time.monotonic() + timeout_s
    try:
        while master.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            if (
                action is not None
                and t_action is None
                and at_step is not None
                and _steps_done(run_dir) >= at_step
            ):
                t_action = time.time()
                action(run_dir)
        rc = master.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        kill_run(run_dir, master)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(rc, run_dir, t_action, records, log.read_text())


def kill_run(run_dir: Path, *masters: subprocess.Popen) -> None:
    """Kill every agent group of ``run_dir`` (continuing stopped ones so they die) and the masters."""
    if (run_dir / "agents.json").exists():
        for row in agents(run_dir):
            for sig in (signal.SIGKILL, signal.SIGCONT):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(row["agent_pid"], sig)
    for master in masters:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
        master.wait(10)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_standalone(
    run_dir: Path, config: Path, timeout_s: float = 600.0, *, entrypoint: Path | None = None
) -> Run:
    """The fault-free reference of a job: its standalone worker as one process (one pipeline).

    With exact accumulation, the split of the global batch across pipelines changes no bit, so this
    one process gives the losses and sample ledger of every fault-free plan of the job. It is forked
    from the session's preloaded server (:mod:`tests.integration.preloaded`).
    ``entrypoint``: a user's script (``oobleck.api``) run instead of ``-m oobleck.runtime.worker``;
    by default the job's own ``entrypoint:`` (what an agent would run), else oobleck's worker.
    """
    if entrypoint is None:
        script = job_entrypoint(config.read_text(), str(config))
        entrypoint = None if script is None else Path(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OOBLECK_CONTROL", "MASTER_"))}
    # NOTE: one intra-op thread, as agents give their workers: no oversubscription of the cores.
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    program = ["-m", "oobleck.runtime.worker"] if entrypoint is None else [str(entrypoint)]
    argv = [sys.executable, *program, "--config", str(config), "--run-dir", str(run_dir)]
    log = run_dir.parent / f"{run_dir.name}.standalone.log"
    code = preloaded.run(argv, env, log, timeout_s)
    output = log.read_text()
    assert code == 0, output[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(0, run_dir, None, records, output)


def kill_group(run_dir: Path, node: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of node ``node``'s agent (agent + workers)."""
    row = next(a for a in agents(run_dir) if a["node"] == node)
    os.killpg(row["agent_pid"], sig)


def assert_losses_match(run: Run, reference: Run, rel: float = 1e-4) -> None:
    """Every step's loss equals the reference run's within ``rel``."""
    assert sorted(run.losses) == sorted(reference.losses)
    for step, loss in reference.losses.items():
        assert abs(run.losses[step] - loss) <= rel * abs(loss), (step, run.losses[step], loss)


def assert_ledger_exact(run: Run, reference: Run, in_flight: tuple[int, ...] = ()) -> None:
    """Each step used exactly the reference step's samples, each exactly once.

    A node killed right after its part of a step may die before appending its ledger line, so
    for the ``in_flight`` steps (those running at the kill) the record may lack that node's slice;
    it still must not repeat or invent a sample.
    """
    got, want = run.ledger(), reference.ledger()
    assert sorted(got) == sorted(want)
    for step, ids in want.items():
        assert len(got[step]) == len(set(got[step])), f"step {step} repeated a sample"
        if step in in_flight:
            assert set(got[step]) <= set(ids), f"step {step} used samples of another step"
        else:
            assert sorted(got[step]) == sorted(ids), f"step {step} used different samples"


HOLD_LIMIT_S = 45.0
"""Longest hold of a run's workers: under gloo's 60 s timeout, so a collective in flight survives it."""
RELEASE_S = 2.0
"""Pause between two holds: the held workers finish any collective that was in flight."""


def admitted(run_dir: Path, node: int) -> bool:
    """Whether the master has announced a generation (after the first) that ``node`` joined."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    # NOTE: complete lines only: a worker may be half-way through appending the last one.
    rows = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return any(r.get("event") == "membership" and node in r["joined"] and r["generation"] > 0 for r in rows)


@contextlib.contextmanager
def workers_held(pids: list[int]) -> Iterator[None]:
    """Stop the workers ``pids`` (SIGSTOP; not their agents) for the block, and continue them after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def start_joiner(run_dir: Path) -> subprocess.Popen[bytes]:
    """Start an agent by hand against the run's master (with its token), in its own session."""
    master = json.loads((run_dir / "master.json").read_text())
    env = {**os.environ, "OOBLECK_TOKEN": (run_dir / "token").read_text().strip()}
    address = f"{master['address']}:{master['port']}"
    argv = [sys.executable, "-m", "oobleck.runtime.agent", "--master", address]
    with (run_dir / "joiner.log").open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def join_held(
    run_dir: Path, node: int, joiner: list[subprocess.Popen[bytes]], timeout_s: float = 240.0
) -> None:
    """Start a late agent (appended to ``joiner``) while the running workers are held, until ``node``
    is admitted or ``timeout_s`` passes.

    A late agent's worker needs seconds to import torch and build its engine (tens of seconds on a
    loaded 2-core machine), longer than a short job lasts. Holding the running workers meanwhile
    makes the join land mid-run however loaded the machine is; their agents keep heartbeating, so no
    node is declared dead. Each hold lasts at most :data:`HOLD_LIMIT_S`, then the workers run for
    :data:`RELEASE_S` (finishing any collective in flight, a step or so) before the next hold.
    """
    held = [pid for row in agents(run_dir) for pid in row["worker_pids"]]
    deadline, started = time.monotonic() + timeout_s, False
    while not started or (not admitted(run_dir, node) and time.monotonic() < deadline):
        with workers_held(held):
            if not started:
                joiner.append(start_joiner(run_dir))
                started = True
            end = min(deadline, time.monotonic() + HOLD_LIMIT_S)
            while not admitted(run_dir, node) and time.monotonic() < end:
                time.sleep(0.05)
        if not admitted(run_dir, node):
            time.sleep(RELEASE_S)
