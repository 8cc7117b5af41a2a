"""Elastic recovery, end to end: real master, agents and workers on localhost; real kills and stops.

Issue #5 acceptance 1-8 (harness in ``harness.py``). Every scenario runs the custom example model
(``examples/custom_model``: the user's script as each worker; fp32, gloo, CPU) under
``python -m oobleck.runtime.master`` and compares its per-step losses and sample ledger with a
fault-free run of the same job. Each run starts its processes in their own process groups and the
harness kills every one of them afterwards (by the pids in agents.json and the master's pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import torch

from oobleck.runtime.control.checkpoint import latest_complete
from oobleck.runtime.control.protocol import AuthenticationError, connect
from oobleck.runtime.control.status_service import fetch_status
from oobleck.runtime.control.status_view import StatusError, StatusView, render
from oobleck.runtime.control.token import read_token_file
from oobleck.runtime.run_status import status_text
from tests.integration.harness import (
    PRODUCT_MISSED_HEARTBEATS,
    Run,
    agents,
    assert_ledger_exact,
    assert_losses_match,
    join_held,
    kill_group,
    run_master,
    workers_held,
    write_hosts,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("elastic")


@pytest.fixture(scope="module")
def reference(folder, fault_free):
    """The fault-free 20-step run (standalone: with exact accumulation every fault-free plan's bits)."""
    run = fault_free(write_job(folder, f=0))
    assert len(run.losses) == 20
    return run


DEEP_TEMPLATE = "pipelines:\n  - stages: [[0, 1, 2], [3, 4, 5]]\n"
"""A single hand-written 2-node template of the custom model: every pipeline spans two nodes."""
JOIN_STEPS = 60
"""Steps of the join job: its workers are held at step 1 until the joiner is admitted."""


class _Recorder:
    """Stands in for a channel's socket and keeps what was sent, to replay it later."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sent = sock, []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)
        self.sock.sendall(data)


def _capture_first_frame(channel) -> bytes:
    recorder = _Recorder(channel._sock)
    channel._sock = recorder
    channel.send({"type": "heartbeat"})
    channel._sock = recorder.sock
    return recorder.sent[0]


def _recovered(run: Run, reference: Run, lost: int = 1, at_step: int = 5) -> dict:
    assert run.rc == 0, run.master_log[-3000:]
    assert_losses_match(run, reference)
    assert_ledger_exact(run, reference, in_flight=(at_step, at_step + 1))
    recoveries = run.events("recovery")
    assert recoveries, "no recovery record in metrics.jsonl"
    assert all(
        set(r["phases_s"]) == {"detect", "plan", "rebuild_groups", "transfer_state", "first_step"}
        for r in recoveries
    )
    assert sum(len(m["lost"]) for m in run.events("membership")) == lost
    return recoveries[-1]


@pytest.mark.timeout(300)
def test_sigkill_agent_group_recovers_in_place(folder, reference):
    """SIGKILL of an agent's process group after step 5 is survived without restarts, losses unchanged;
    `oobleck status` (run dir and live `--master`) shows the running job's plan and step rate, and after
    the kill the new plan; TensorBoard gets every step's loss and the recovery."""
    shown: list[str] = []
    live: list[StatusView] = []

    def status_then_kill(run_dir: Path) -> None:
        shown.append(status_text(run_dir))
        master = json.loads((run_dir / "master.json").read_text())
        ask = (master["address"], master["port"], read_token_file(run_dir / "token"))
        live.append(fetch_status(*ask))
        kill_group(run_dir, 2)
        # NOTE: the live view after the kill: polled until the new plan shows (the job is still
        # running then: it has 14 steps to go), or the master is gone.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                view = fetch_status(*ask)
            except StatusError:
                break
            if view.plan is not None and view.plan.generation >= 1:
                live.append(view)
                break
            time.sleep(0.05)

    # NOTE: its own file: the other tests of this module rewrite write_job's.
    config = folder / "job_s20_f1_tensorboard.yaml"
    config.write_text(write_job(folder).read_text() + "logging:\n  tensorboard: true\n")
    run = run_master(folder / "kill", write_hosts(folder, 4), config, at_step=5, action=status_then_kill)
    record = _recovered(run, reference)
    assert record["lost"] == [2]
    first_pids = {a["node"]: a["worker_pids"] for a in agents(run.run_dir)}
    assert len(first_pids) == 4  # survivors kept their original workers (no restart)
    assert record["t_first_step"] - run.t_action < 10.0
    running = shown[0]
    assert "job      running" in running and "steps/s" in running, running
    assert "plan     generation 0:" in running and "node 2: layers" in running, running
    before = render(live[0])
    assert "job      running" in before and "steps/s" in before, before
    assert "nodes    4 alive of 4 registered" in before and "node 2: layers" in before, before
    assert len(live) == 2, "the live status never showed the plan after the kill"
    gone = [n.node for n in live[1].nodes or () if not n.alive]
    assert gone == [2] and "nodes    3 alive of 4 registered" in render(live[1]), render(live[1])
    assert live[1].plan is not None and all(s.node != 2 for p in live[1].plan.pipelines for s in p.stages)
    after = status_text(run.run_dir)
    assert "plan     generation 1:" in after and "node 2: layers" not in after, after
    assert "recovery gen 1: lost [2]" in after, after
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(run.losses, rel=1e-6)
    assert [e.step for e in events.Scalars("recovery/total_s")] == [r["step"] for r in run.events("recovery")]


@pytest.mark.timeout(300)
def test_sigstop_agent_detected_by_heartbeats(folder, reference):
    """A stopped (hung) agent is declared dead by heartbeats within 2 s and recovered from."""
    run = run_master(
        folder / "stop",
        write_hosts(folder, 4),
        write_job(folder),
        at_step=5,
        action=lambda d: kill_group(d, 1, signal.SIGSTOP),
        missed_heartbeats=PRODUCT_MISSED_HEARTBEATS,
    )
    _recovered(run, reference)
    failure = next(m for m in run.events("membership") if m["lost"])
    assert "heartbeat" in failure["reason"]
    assert failure["t"] - run.t_action < 2.0


@pytest.mark.timeout(300)
def test_worker_exit_under_live_agent_is_a_node_failure(folder, reference):
    """Killing only a worker (its agent alive) removes that node and training continues unchanged."""

    def kill_worker(run_dir: Path) -> None:
        os.kill(next(a for a in agents(run_dir) if a["node"] == 3)["worker_pids"][0], signal.SIGKILL)

    run = run_master(
        folder / "worker", write_hosts(folder, 4), write_job(folder), at_step=5, action=kill_worker
    )
    record = _recovered(run, reference)
    assert "worker 0 exited" in record["reason"]


@pytest.mark.timeout(300)
def test_two_simultaneous_losses_with_f2(folder, reference):
    """Six agents with f=2 survive two agents killed at the same moment."""

    def kill_two(run_dir: Path) -> None:
        kill_group(run_dir, 1)
        kill_group(run_dir, 4)

    run = run_master(
        folder / "two", write_hosts(folder, 6), write_job(folder, f=2), at_step=5, action=kill_two
    )
    _recovered(run, reference, lost=2)


@pytest.mark.timeout(300)
def test_second_loss_during_reconfiguration(folder, reference):
    """A second node killed as soon as the first loss is announced is recovered from as well."""

    def kill_then_kill(run_dir: Path) -> None:
        kill_group(run_dir, 0)
        deadline = time.monotonic() + 10
        metrics = run_dir / "metrics.jsonl"
        while '"generation": 1' not in metrics.read_text() and time.monotonic() < deadline:
            time.sleep(0.002)
        kill_group(run_dir, 3)

    run = run_master(
        folder / "second", write_hosts(folder, 4), write_job(folder), at_step=5, action=kill_then_kill
    )
    _recovered(run, reference, lost=2)


@pytest.mark.timeout(500)
def test_late_agent_joins_at_a_step_boundary(folder, fault_free):
    """An agent started by hand mid-run joins at a step boundary, is used, and losses stay unchanged."""
    joiner: list[subprocess.Popen[bytes]] = []
    try:
        run = run_master(
            folder / "join",
            write_hosts(folder, 4),
            write_job(folder, steps=JOIN_STEPS),
            at_step=1,
            action=lambda d: join_held(d, 4, joiner),
        )
    finally:
        for process in joiner:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    twin = fault_free(write_job(folder, steps=JOIN_STEPS, f=0))
    assert run.rc == 0, run.master_log[-3000:]
    joins = [m for m in run.events("membership") if m["joined"] and m["generation"] > 0]
    assert joins and joins[0]["joined"] == [4]
    assert_losses_match(run, twin)
    assert_ledger_exact(run, twin)
    later = [r for r in run.records if "loss" in r and r.get("generation", 0) >= joins[0]["generation"]]
    assert later, "the joined generation never ran a step"
    assert (run.run_dir / "ledger" / "node4.jsonl").exists()


@pytest.mark.timeout(400)
def test_bad_clients_do_not_disturb_a_running_job(folder, reference):
    """No token, wrong MAC, replay, oversized and pickle clients are rejected and logged; the job goes on."""

    def attack(run_dir: Path) -> None:
        # NOTE: the workers are held while the attacks are made, so they land mid-run however
        # fast the job would otherwise finish; the agents (not held) keep heartbeating.
        with workers_held([pid for row in agents(run_dir) for pid in row["worker_pids"]]):
            attack_master(run_dir)

    def attack_master(run_dir: Path) -> None:
        master = json.loads((run_dir / "master.json").read_text())
        token = (run_dir / "token").read_text().strip().encode()
        address = ("127.0.0.1", master["port"])
        with pytest.raises(AuthenticationError):
            connect(*address, b"x" * 32, "agent")
        raw = socket.create_connection(address)
        raw.recv(4096)
        raw.sendall(pickle.dumps({"type": "auth", "pad": "x" * 64}))
        raw.close()
        for bad in ("mac", "replay", "oversize"):
            channel = connect(*address, token, "submit")
            sock = channel._sock
            if bad == "mac":
                sock.sendall(struct.pack(">IQ32s", 12, 1, b"\1" * 32) + b'{"type":"x"}')
            elif bad == "oversize":
                sock.sendall(struct.pack(">IQ32s", 1 << 30, 1, b"\0" * 32))
            else:
                sock.sendall(_capture_first_frame(channel))
            time.sleep(0.2)
            channel.close()

    run = run_master(folder / "attack", write_hosts(folder, 4), write_job(folder), at_step=3, action=attack)
    assert run.rc == 0, run.master_log[-3000:]
    assert_losses_match(run, reference)
    assert not [m for m in run.events("membership") if m["generation"] > 0]
    assert run.master_log.count("rejected connection") >= 2
    assert run.master_log.count("closed connection") >= 3


@pytest.mark.timeout(400)
def test_rerun_after_losing_everything_resumes_from_checkpoint(folder, reference):
    """After master and all nodes die, a re-run of the master on the run dir resumes from its checkpoint."""

    def kill_everything(run_dir: Path) -> None:
        os.killpg(json.loads((run_dir / "master.json").read_text())["pid"], signal.SIGKILL)
        for row in agents(run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(row["agent_pid"], signal.SIGKILL)

    job = write_job(folder, every=5)
    run_dir = folder / "resume"
    first = run_master(run_dir, write_hosts(folder, 4), job, at_step=12, action=kill_everything)
    assert first.rc != 0
    assert (run_dir / "checkpoints" / "step00000010").is_dir()
    second = run_master(run_dir, write_hosts(folder, 4), job)
    assert second.rc == 0, second.master_log[-3000:]
    steps = [r["step"] for r in second.records if "loss" in r and "event" not in r]
    assert steps.count(0) == 1, "the re-run started over instead of resuming"
    assert steps.count(10) == 2 and steps[-1] == 19
    assert_losses_match(second, reference)


@pytest.mark.timeout(400)
def test_losing_every_replica_of_a_stage_restarts_from_the_checkpoint(folder):
    """Both first stages lost at once: the job restarts from its checkpoint on the survivors, and ends
    with exactly the parameters of a fault-free run restarted from that checkpoint."""

    def kill_both_first_stages(run_dir: Path) -> None:
        kill_group(run_dir, 0)
        kill_group(run_dir, 2)

    # NOTE: the one template has 2 nodes (the example's layers 0-2 and 3-5), so four agents run
    # pipelines [0, 1] and [2, 3]; nodes 0 and 2 hold every replica of the first stage.
    job = folder / "job_deep.yaml"
    job.write_text(write_job(folder, steps=20, f=1, every=5).read_text() + DEEP_TEMPLATE)
    run = run_master(folder / "deep", write_hosts(folder, 4), job, at_step=6, action=kill_both_first_stages)
    assert run.rc == 0, run.master_log[-3000:]
    restart = next(r for r in run.events("recovery") if r.get("restart"))
    resumed_at = restart["checkpoint_step"]
    assert resumed_at in (5, 10) and restart["lost"] in ([0, 2], [0], [2])

    reference_dir = folder / "deep_ref"
    checkpoint = f"step{resumed_at:08d}"
    shutil.copytree(run.run_dir / "checkpoints" / checkpoint, reference_dir / "checkpoints" / checkpoint)
    reference = run_master(reference_dir, write_hosts(folder, 2), job)
    assert reference.rc == 0, reference.master_log[-3000:]

    restarted = {s: loss for s, loss in run.losses.items() if s >= resumed_at}
    assert restarted == pytest.approx(reference.losses, rel=1e-6)
    final, expected = (latest_complete(d / "checkpoints", 4) for d in (run.run_dir, reference_dir))
    assert final is not None and expected is not None and final.step == expected.step == 20
    got, want = final.load(), expected.load()
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.timeout(300)
def test_planner_claimer_dying_before_publishing_does_not_livelock(folder, reference):
    """The worker that wins the generation-0 planner claim fails before publishing; the survivors
    take the claim over from the departed owner and train every step with the reference losses."""
    run = run_master(
        folder / "claim_dies",
        write_hosts(folder, 4),
        write_job(folder),
        extra_env={"OOBLECK_TEST_FAULT": "after_claim"},
        timeout_s=200.0,
    )
    assert run.rc == 0, run.master_log[-3000:]
    assert_losses_match(run, reference)
    assert_ledger_exact(run, reference)
    assert sum(len(m["lost"]) for m in run.events("membership")) == 1
