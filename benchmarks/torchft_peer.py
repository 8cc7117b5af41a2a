"""torchft, the peer of the recovery benchmark: replica groups healed by a Lighthouse and a Manager.

Scenario: the job of ``benchmarks/recovery.py`` (tiny GPT-2, pydoc bytes, same seed and global batch)
trained by torchft 0.2.0 on gloo, one process per node:
* ``dp``: R replica groups of one process each, ``Manager`` + ``OptimizerWrapper`` as in torchft's
  own ``train_ddp.py``, gradients averaged by one ``Manager.allreduce`` of the flattened gradients
  (what ``torchft.DistributedDataParallel``'s comm hook does per bucket). NOTE: that wrapper is not
  used because in torchft 0.2.0 its hook raises ``AssertionError`` (``ddp.py``: ``assert fut._fut``)
  when a peer dies during the all-reduce, which kills every survivor (seen in this benchmark);
  ``--ddp`` uses it anyway;
* ``pp``: R replica groups of two pipeline stages (embedding + block 0 | block 1 + head), a GPipe
  step over the group's microbatches with point-to-point sends inside the group, and one Manager
  per stage that averages that stage's gradients across the replica groups. A group is torchft's
  failure domain: when one of its nodes dies, the other cannot continue (its pipeline is cut) and
  exits; the surviving groups go on.
Data as torchft's ``DistributedSampler`` shards it: each group owns a fixed slice of every step of
oobleck's seeded global sampler and its loader advances every iteration, committed or not, so a
lost group's slice and an interrupted step's samples are not trained (measured, not assumed:
every committed step records its sample ids).

Each process appends one JSON row per committed step to ``rows-g<group>s<stage>.jsonl``. Nothing
here is imported by oobleck; torchft is the optional ``bench`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any


def _responsive(*, heartbeat_timeout_ms: int, heartbeat_interval_ms: int, timeout_s: float) -> dict[str, Any]:
    """Settings of a responsive torchft job: a 10 ms quorum tick, second-scale rpc timeouts, and
    the given failure detection (heartbeats, and the timeout of an all-reduce and of gloo).

    NOTE: join_timeout_ms only bounds the wait for a *live* straggler; at 100 ms this shared
    machine's step skew made quorums drop and re-admit a replica every few steps (each a
    reconfiguration and a heal: 2-4 s steps), so it is set just above that skew. It does not delay
    the recovery: the dead replica stops heartbeating and the survivors' quorum forms on expiry.
    """
    return {
        "lighthouse": [
            "--join_timeout_ms",
            "1000",
            "--quorum_tick_ms",
            "10",
            "--heartbeat_timeout_ms",
            str(heartbeat_timeout_ms),
        ],
        "manager": {
            "heartbeat_interval": timedelta(milliseconds=heartbeat_interval_ms),
            "timeout": timedelta(seconds=timeout_s),
            "quorum_timeout": timedelta(seconds=5),
            "connect_timeout": timedelta(seconds=5),
        },
        "gloo_timeout_s": timeout_s,
    }


SETTINGS: dict[str, dict[str, Any]] = {
    # NOTE: torchft's defaults: only --min_replicas is required by the lighthouse.
    "default": {"lighthouse": [], "manager": {}, "gloo_timeout_s": 60.0},
    # What a user would pick for any model: a dead replica's heartbeat expired after 200 ms (the
    # lighthouse then issues the quorum of the survivors at once), 20 ms heartbeats, and
    # train_ddp.py's 5 s gloo timeout.
    "tuned": _responsive(heartbeat_timeout_ms=200, heartbeat_interval_ms=20, timeout_s=5.0),
    # The fastest torchft recovers here: a lost replica is noticed only by timeouts (a survivor's
    # all-reduce waits out the Manager's ``timeout``; the lighthouse drops the replica when its
    # heartbeats stop for ``heartbeat_timeout_ms``), so kill -> next is about their sum. Sized to
    # this tiny model, whose all-reduce takes ~1 ms: a 20 ms operation timeout, 30 ms of silence
    # (heartbeats every 10 ms). Measured in 3 killed runs each (kill -> next): 5 s / 200 ms ->
    # 5.05 s ("tuned"); 100 ms / 100 ms -> 0.16-0.18 s; 50 ms / 50 ms -> 0.10-0.11 s;
    # 20 ms / 30 ms -> 0.06-0.07 s, every step still committed. Not usable where an all-reduce
    # can outlast 20 ms, a bigger model's or ``pp`` mode's: there the groups reach the cross-group
    # all-reduce tens of ms apart and the first step times out (seen: every group ended within
    # 24 s). Oobleck's detection waits on no timeout.
    "aggressive": _responsive(heartbeat_timeout_ms=30, heartbeat_interval_ms=10, timeout_s=0.02),
}
"""Named torchft settings: extra lighthouse flags, Manager keyword arguments, gloo timeout."""
STAGE_LAYERS = ((0, 1), (2, 3))
"""Layers of each pipeline stage in ``pp`` mode (embedding, block 0 | block 1, head)."""


def lighthouse_command(settings: str, min_replicas: int, port: int) -> list[str]:
    """The ``torchft_lighthouse`` command line for a named setting.

    Args:
        settings: A key of :data:`SETTINGS`.
        min_replicas: Smallest quorum; the survivors' count, so a quorum forms after a loss.
        port: Port to bind on localhost.

    Returns:
        The argv, for ``subprocess.Popen``.
    """
    binary = Path(sys.executable).with_name("torchft_lighthouse")
    argv = [str(binary), "--min_replicas", str(min_replicas), "--bind", f"[::]:{port}"]
    return argv + SETTINGS[settings]["lighthouse"]


def free_port() -> int:
    """A port that was free on localhost a moment ago (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


def run_job(
    out: Path,
    job: Path,
    *,
    mode: str,
    settings: str,
    groups: int,
    kill_after: int | None,
    victim: tuple[int, int] = (0, 0),
    timeout_s: float = 300.0,
    place: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run one torchft job on this machine; SIGKILL the ``victim`` (group, stage) after a step.

    Args:
        out: Fresh folder for rows, logs and pids.
        job: Job YAML (model, data, seed, global batch, steps).
        mode: ``dp`` (groups of one process) or ``pp`` (groups of two pipeline stages).
        settings: A key of :data:`SETTINGS`.
        groups: Replica groups.
        kill_after: Kill once a committed step >= this is recorded; None runs fault-free.
        victim: (group, stage) of the process to kill.
        timeout_s: Bound on the whole job; every process is killed at the end.
        place: Called with (node, pid) for each worker as it starts, node ``group * stages +
            stage`` (``node_cpu.NodeCpuBudgets.place``); the lighthouse is not a node.

    Returns:
        ``t_kill`` (wall clock, or None), ``rows`` per ``"g<group>s<stage>"`` and ``exit_codes``.

    Raises:
        RuntimeError: The job ended before the kill step or did not finish within ``timeout_s``.
    """
    out.mkdir(parents=True)
    stages = 2 if mode == "pp" else 1
    survivors = groups - 1 if kill_after is not None else groups
    port = free_port()
    logs = (out / "lighthouse.log").open("w")
    procs = [
        subprocess.Popen(
            lighthouse_command(settings, survivors, port),
            stdout=logs,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    workers: dict[str, subprocess.Popen[bytes]] = {}
    # NOTE: one intra-op thread per process, as oobleck's agents and torchrun give their workers:
    # several processes per core must not each spin a thread per core.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for group in range(groups):
        store_port = free_port()
        for stage in range(stages):
            argv = [sys.executable, __file__, "--mode", mode, "--settings", settings, "--config", str(job)]
            argv += ["--out", str(out), "--group", str(group), "--groups", str(groups)]
            argv += ["--stage", str(stage), "--store-port", str(store_port)]
            argv += ["--lighthouse", f"http://localhost:{port}", "--min-replicas", str(survivors)]
            log = (out / f"g{group}s{stage}.log").open("w")
            worker = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
            workers[f"g{group}s{stage}"] = worker
            if place is not None:
                place(group * stages + stage, worker.pid)
    procs += workers.values()
    deadline = time.monotonic() + timeout_s
    t_kill = None
    try:
        while any(w.poll() is None for w in workers.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"torchft {mode}/{settings} did not finish within {timeout_s:g} s; see {out}"
                )
            if kill_after is not None and t_kill is None and _last_step(out, workers) >= kill_after:
                t_kill = time.time()
                workers[f"g{victim[0]}s{victim[1]}"].kill()
            time.sleep(0.01)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if kill_after is not None and t_kill is None:
        raise RuntimeError(f"torchft {mode}/{settings} ended before step {kill_after}; see {out}")
    rows = {name: _rows(out / f"rows-{name}.jsonl") for name in workers}
    return {"t_kill": t_kill, "rows": rows, "exit_codes": {n: w.returncode for n, w in workers.items()}}


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # NOTE: a process killed mid-write leaves half a line.
            continue
    return rows


def _last_step(out: Path, workers: Iterable[str]) -> int:
    """The newest step every worker has committed (-1 while any has committed none).

    NOTE: the slowest worker's, not the fastest's: the lighthouse forms a quorum of
    ``min_replicas`` (the survivors' count) groups, so a group still importing torch is left out and
    the others train without it; killing it then would kill a node that never trained (seen with
    each node on a CPU budget, where start-up is slow).
    """
    newest = (max((row["step"] for row in _rows(out / f"rows-{name}.jsonl")), default=-1) for name in workers)
    return min(newest)


def _train(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torchft import DistributedDataParallel, Manager, Optimizer, ProcessGroupGloo

    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.engine import build_adapter
    from oobleck.runtime.engine.data import GlobalSampler, load_dataset
    from oobleck.runtime.engine.executor import microbatch_loss

    job = load_job_config(args.config)
    adapter = build_adapter(job.model)
    dataset = load_dataset(job.data, adapter.vocab_size)
    sampler = GlobalSampler(len(dataset), seed=job.seed, global_batch=job.global_batch)
    setting = SETTINGS[args.settings]
    stages = 2 if args.mode == "pp" else 1
    layers = STAGE_LAYERS[args.stage] if stages == 2 else tuple(range(adapter.num_layers))
    model = nn.Sequential(*(adapter.build_layer(i, job.seed) for i in layers))
    store = dist.TCPStore(
        "localhost", args.store_port, stages, is_master=args.stage == 0, wait_for_workers=False
    )
    if stages == 2:
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore("pipeline", store),
            rank=args.stage,
            world_size=2,
            timeout=timedelta(seconds=setting["gloo_timeout_s"]),
        )
    optim = torch.optim.AdamW(
        model.parameters(), lr=job.optim.lr, betas=job.optim.betas, weight_decay=job.optim.weight_decay
    )

    def state_dict() -> dict[str, Any]:
        return {"model": model.state_dict(), "optim": optim.state_dict()}

    def load_state_dict(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])

    manager = Manager(
        pg=ProcessGroupGloo(timeout=timedelta(seconds=setting["gloo_timeout_s"])),
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        min_replica_size=args.min_replicas,
        rank=args.stage,
        world_size=stages,
        store_addr="localhost",
        store_port=args.store_port,
        lighthouse_addr=args.lighthouse,
        replica_id=f"{args.mode}_{args.group}",
        init_sync=False,  # NOTE: every replica builds the same seeded weights, as torchft advises.
        **setting["manager"],
    )
    _start_together(Path(args.out), f"g{args.group}s{args.stage}", args.groups * stages)
    ddp = DistributedDataParallel(manager, model) if stages == 1 and args.ddp else None
    wrapper = Optimizer(manager, optim)
    per_group = job.global_batch // args.groups
    out = Path(args.out) / f"rows-g{args.group}s{args.stage}.jsonl"
    iteration = 0
    while manager.current_step() < job.steps:
        ids = sampler.step_samples(iteration, start=args.group * per_group, count=per_group)
        iteration += 1
        tokens = dataset.batch(ids)
        wrapper.zero_grad()
        if ddp is not None:
            loss = microbatch_loss(ddp(tokens[:, :-1]), tokens[:, 1:])
            loss.backward()
        else:
            if stages == 1:
                loss = microbatch_loss(model(tokens[:, :-1]), tokens[:, 1:])
                loss.backward()
            else:
                loss = _pipeline_step(model, tokens, job.microbatch_size, args.stage, adapter.hidden_size)
            flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
            manager.allreduce(flat).wait()
            offset = 0
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.copy_(flat[offset : offset + param.numel()].view_as(param))
                    offset += param.numel()
        if manager.should_commit():
            optim.step()
            # NOTE: the quorum id is private in torchft 0.2.0; it tells the quorum formed after a kill.
            row = {
                "step": manager.current_step() - 1,
                "t": time.time(),
                "ids": ids,
                "quorum": manager._quorum_id,
            }
            row |= {"participants": manager.num_participants(), "loss": None if loss is None else float(loss)}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    manager.shutdown(wait=False)


def _start_together(out: Path, name: str, workers: int, timeout_s: float = 120.0) -> None:
    """Wait until every worker has its Manager (so every group heartbeats) before the first quorum.

    NOTE: the lighthouse's ``min_replicas`` is the survivors' count, so the first quorum forms
    without a group still starting up (importing torch on a loaded machine), and that group then
    waits for a quorum the others, training, may never ask for within torchft's 60 s default join
    timeout (seen: groups 0 and 2 trained all 30 steps while group 1 timed out). With every
    Manager heartbeating first, the lighthouse's fast quorum takes every group, as oobleck's first
    generation takes every agent.

    Raises:
        RuntimeError: not every worker was ready within ``timeout_s``.
    """
    (out / f"ready-{name}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(out.glob("ready-g*s*"))) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every torchft worker started within {timeout_s:g} s")
        time.sleep(0.01)


def _pipeline_step(model: Any, tokens: Any, microbatch_size: int, stage: int, hidden_size: int) -> Any:
    """One GPipe step of a two-stage group; returns the mean loss on the last stage, else None."""
    import torch
    import torch.distributed as dist

    from oobleck.runtime.engine.executor import microbatch_loss

    chunks = tokens.split(microbatch_size)
    # NOTE: sends are asynchronous so neither stage waits on a send while the other waits on it too
    # (gloo's send completes only against a posted receive).
    pending = []
    if stage == 0:
        outputs = []
        for chunk in chunks:
            outputs.append(model(chunk[:, :-1]))
            pending.append(dist.isend(outputs[-1].detach(), dst=1))
        for output in outputs:
            grad = torch.empty_like(output)
            dist.recv(grad, src=1)
            output.backward(grad)
        _wait_all(pending)
        return None
    total = 0.0
    for chunk in chunks:
        hidden = torch.empty(chunk.shape[0], chunk.shape[1] - 1, hidden_size)
        dist.recv(hidden, src=0)
        hidden.requires_grad_()
        loss = microbatch_loss(model(hidden), chunk[:, 1:]) / len(chunks)
        loss.backward()
        if hidden.grad is None:
            raise RuntimeError("the last stage computed no gradient for its received activation")
        pending.append(dist.isend(hidden.grad, dst=0))
        total += float(loss)
    _wait_all(pending)
    return torch.tensor(total)


def _wait_all(pending: list[Any]) -> None:
    """Wait for the step's asynchronous sends (gloo returns a handle for each)."""
    for work in pending:
        if work is not None:
            work.wait()


def main(argv: list[str] | None = None) -> int:
    """Worker entry: train until the job's steps are committed; exit 3 when this group is cut."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("dp", "pp"), required=True)
    parser.add_argument("--settings", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--config", required=True, help="job YAML")
    parser.add_argument("--out", required=True, help="folder for the rows files")
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--groups", type=int, required=True)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--store-port", type=int, required=True)
    parser.add_argument("--lighthouse", required=True, help="http://host:port")
    parser.add_argument("--min-replicas", type=int, required=True)
    parser.add_argument("--ddp", action="store_true", help="dp mode: torchft.DistributedDataParallel")
    args = parser.parse_args(argv)
    (Path(args.out) / f"pid-g{args.group}s{args.stage}").write_text(str(os.getpid()))
    code = 0
    try:
        _train(args)
    except Exception as error:  # NOTE: a cut pipeline ends its group; the survivors go on.
        print(f"group {args.group} stage {args.stage} ends: {type(error).__name__}: {error}", file=sys.stderr)
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    # NOTE: torchft's rpc and quorum threads are not daemons; a cut group must not linger on them.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
