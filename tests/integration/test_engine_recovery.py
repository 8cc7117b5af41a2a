"""Engine recovery API without the control plane: a node leaves, survivors reconfigure and stay exact.

Four processes train 3 steps under a 1-stage + 3-stage plan; node 3 then leaves (planned), the three
survivors call ``Engine.reconfigure`` (new groups, layer and optimizer state copied from surviving
holders, dropped layers released) into a 1-stage + 2-stage plan and train 2 more steps. Losses and
final parameters equal a one-process run of the same 5 steps.

This file is also the child script: ``python test_engine_recovery.py MODE RANK WORLD PORT CONFIG OUT``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

STEPS, LEAVE_AFTER = 5, 3
TOLERANCE = 1e-5


def _plan(pipelines, nodes):
    from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage

    built = []
    for (bounds, microbatches), members in zip(pipelines, nodes, strict=True):
        stages = tuple(
            Stage(first_layer=a, end_layer=b, node=i, gpus=1, latency_s=1.0, memory_bytes=0)
            for i, (a, b) in enumerate(bounds)
        )
        template = PipelineTemplate(num_nodes=len(bounds), gpus_per_node=1, stages=stages)
        built.append(Pipeline(template=template, nodes=tuple(members), microbatches=microbatches))
    total = sum(p.microbatches for p in built)
    return Plan(
        pipelines=tuple(built),
        global_microbatches=total,
        microbatch_size=2,
        fault_tolerance=1,
        iteration_time_s=1.0,
    )


def _small_memory_planner(engine, job):
    """The planning core's Planner on a node so small that the tiny model needs 2-stage pipelines."""
    from oobleck.planning.hardware import HardwareSpec
    from oobleck.planning.planner import Planner
    from oobleck.runtime.engine import estimate_profile

    hardware = HardwareSpec(
        name="tiny-node",
        gpus_per_node=1,
        gpu_memory_bytes=2_000_000,
        peak_flops=1e11,
        intra_node_bandwidth_bytes_per_s=1e9,
        inter_node_bandwidth_bytes_per_s=1e9,
    )
    profile = estimate_profile(
        engine.adapter, microbatch_size=job.microbatch_size, sequence_length=16, hardware=hardware
    )
    return Planner(
        profile,
        hardware,
        fault_tolerance=1,
        global_microbatches=job.global_microbatches,
        microbatch_size=job.microbatch_size,
        max_nodes=4,
        max_gpus_per_stage=1,
    )


def child(mode: str, rank: int, world: int, port: int, config: str, out: str) -> None:
    """One process: the one-process reference, or one node of the recovery scenario."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from oobleck.runtime.config import load_job_config
    from oobleck.runtime.engine import CommunicationError, Engine, plan_transfers

    torch.set_num_threads(1)
    job = load_job_config(config)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=timedelta(seconds=60))
    engine = Engine(job, node=rank, timeout=timedelta(seconds=60))
    record = Path(out) / f"node{rank}.jsonl"

    def train(steps: range) -> None:
        for step in steps:
            metrics = engine.train_step(step)
            with record.open("a") as file:
                file.write(json.dumps(metrics.to_dict()) + "\n")

    if mode in ("abort", "hang"):
        engine.configure(_plan([([(0, 4)], 4), ([(0, 4)], 4)], [[0], [1]]), 0, {0: 0, 1: 1}, store)
        if rank == 1 and mode == "hang":  # a hung peer: sockets open, never joins the step
            deadline = time.monotonic() + 30
            while not record.with_name("node0.jsonl").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return
        if rank == 1:
            time.sleep(1.0)
            engine.abort("leaving on purpose")
            engine.abort("twice is fine")
            return
        if mode == "hang":  # the control plane's notice arrives on another thread
            threading.Timer(1.0, engine.abort, args=("failure notice",)).start()
        start = time.monotonic()
        try:
            engine.train_step(0)
        except CommunicationError as error:
            first = error
        unblocked_s = time.monotonic() - start
        try:
            engine.train_step(0)
        except CommunicationError as error:
            latched = error is first
        record.write_text(json.dumps({"unblocked_s": unblocked_s, "latched": latched, "error": str(first)}))
        engine.close()
        return
    if mode == "ref":
        engine.configure(_plan([([(0, 4)], 8)], [[0]]), 0, {0: 0}, store)
        train(range(STEPS))
    elif mode == "redo":
        first = _plan([([(0, 2), (2, 4)], 4), ([(0, 4)], 4)], [[0, 1], [2]])
        engine.configure(first, 0, {0: 0, 1: 1, 2: 2}, store)
        train(range(1))
        moved = _plan([([(0, 4)], 4), ([(0, 2), (2, 4)], 4)], [[0], [1, 2]])
        everyone = {0: 0, 1: 1, 2: 2}
        engine.reconfigure(moved, plan_transfers(first, moved, alive_nodes=[0, 1, 2]), 1, everyone, store)
        if rank == 0:  # lost after the reconfiguration completed, before any step under ``moved``
            engine.close()
            # NOTE: this process hosts the rendezvous store, which in the runtime lives on the
            # master and outlives a lost node: keep serving it until the survivors are done.
            store.wait(["redo/done1", "redo/done2"], timedelta(seconds=120))
            return
        # NOTE: under ``moved`` node 2 gave up layers 0-1; under ``first`` it is their only survivor.
        final = _plan([([(0, 2), (2, 4)], 8)], [[1, 2]])
        engine.reconfigure(final, plan_transfers(first, final, alive_nodes=[1, 2]), 2, {1: 0, 2: 1}, store)
        assert sorted(engine.layers) == list(final.layers_of_node(rank))
        train(range(1, STEPS))
        save_file(engine.state_tensors(), str(Path(out) / f"node{rank}.safetensors"))
        engine.close()
        store.set(f"redo/done{rank}", "1")
        return
    else:
        if mode == "planner":
            planner = _small_memory_planner(engine, job)
            before = planner.plan((0, 1, 2, 3))
        else:
            before = _plan([([(0, 4)], 3), ([(0, 1), (1, 3), (3, 4)], 5)], [[0], [1, 2, 3]])
        engine.configure(before, 0, {n: n for n in range(4)}, store)
        train(range(LEAVE_AFTER))
        if rank == 3:
            engine.close()
            return
        if mode == "planner":
            change = planner.reconfigure(before, lost_nodes=(3,))
            after, transfers = change.plan, change.transfers
            (Path(out) / "plans.json").write_text(json.dumps([before.to_dict(), after.to_dict()]))
        else:
            after = _plan([([(0, 4)], 3), ([(0, 2), (2, 4)], 5)], [[0], [1, 2]])
            transfers = plan_transfers(before, after, alive_nodes=[0, 1, 2])
        timing = engine.reconfigure(after, transfers, 1, {0: 0, 1: 1, 2: 2}, store)
        (Path(out) / f"timing{rank}.json").write_text(json.dumps(timing.to_dict()))
        assert sorted(engine.layers) == list(after.layers_of_node(rank))
        train(range(LEAVE_AFTER, STEPS))
    save_file(engine.state_tensors(), str(Path(out) / f"node{rank}.safetensors"))
    engine.close()


def _write_job(folder: Path) -> Path:
    job = {
        "model": "tiny-gpt2-tied",
        "data": {"sequence_length": 16},
        "global_batch": 16,
        "microbatch_size": 2,
        "steps": STEPS,
        "optim": {
            "lr": 0.003,
            "warmup_steps": 1,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "exact_accumulation": True,
        },
        "seed": 3,
        "fault_tolerance": 1,
    }
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    return config


def _run(launch_ranks: Callable[..., None], mode: str, world: int, config: Path, out: Path) -> None:
    """Run this file as ``world`` child processes in ``mode`` (see :func:`child`)."""
    out.mkdir()

    def argv(rank: int, port: int) -> list[str]:
        return [sys.executable, __file__, mode, str(rank), str(world), str(port), str(config), str(out)]

    launch_ranks(world, out, argv)


def assert_matches_reference(ref_dir: Path, out: Path, survivors: tuple[int, ...]) -> None:
    """Every step's loss, and every survivor's final state, equal the one-process run's (rel 1e-5)."""
    from safetensors.torch import load_file

    def losses(path: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in path.read_text().splitlines()]

    expected, got = losses(ref_dir / "node0.jsonl"), losses(out / f"node{survivors[0]}.jsonl")
    assert len(got) == len(expected) == STEPS
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert abs(a - b) <= TOLERANCE * abs(b), f"step {step}: {a} vs {b}"
    ref_state = load_file(str(ref_dir / "node0.safetensors"))
    seen = set()
    for node in survivors:
        for key, tensor in load_file(str(out / f"node{node}.safetensors")).items():
            ref = ref_state[key]
            assert float((tensor.double() - ref.double()).norm()) <= TOLERANCE * max(
                float(ref.double().norm()), 1e-12
            ), key
            seen.add(key)
    assert seen == set(ref_state)


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, launch_ranks: Callable[..., None]
) -> tuple[Path, Path]:
    """The job config and the folder of its one-process run, shared by the recovery scenarios."""
    folder = tmp_path_factory.mktemp("reference")
    config = _write_job(folder)
    _run(launch_ranks, "ref", 1, config, folder / "ref")
    return config, folder / "ref"


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["recover", "planner"])
def test_survivors_reconfigure_and_match_one_process(
    tmp_path: Path, mode: str, reference: tuple[Path, Path], launch_ranks: Callable[..., None]
) -> None:
    """After node 3 leaves at step 3 (hand-made or planned), losses and state equal one process."""
    config, ref_dir = reference
    _run(launch_ranks, mode, 4, config, tmp_path / "rec")
    assert_matches_reference(ref_dir, tmp_path / "rec", survivors=(0, 1, 2))
    generations = [json.loads(line)["generation"] for line in (tmp_path / "rec" / "node1.jsonl").open()]
    assert generations == [0] * LEAVE_AFTER + [1] * (STEPS - LEAVE_AFTER)
    timing = [json.loads((tmp_path / "rec" / f"timing{n}.json").read_text()) for n in range(3)]
    assert sum(t["bytes_sent"] for t in timing) == sum(t["bytes_received"] for t in timing) > 0
    for rank_timing in timing:  # one LayerCopy per received layer, its bytes the rank's total
        copies = rank_timing["copies"]
        assert sum(c["bytes"] for c in copies) == rank_timing["bytes_received"]
        assert all(c["ms"] > 0 and c["src"] != c["dst"] for c in copies)
    if mode == "recover":
        assert (
            timing[0]["bytes_sent"] > 0
            and timing[1]["bytes_received"] > 0
            and timing[2]["bytes_received"] > 0
        )
    else:
        before, after = json.loads((tmp_path / "rec" / "plans.json").read_text())
        assert [len(p["stages"]) for p in before["pipelines"]] == [2, 2]
        assert sorted(n for p in after["pipelines"] for n in p["nodes"]) == [0, 1, 2]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_abort_unblocks_a_peer_waiting_in_a_step(tmp_path: Path, launch_ranks: Callable[..., None]) -> None:
    """An aborting rank makes its blocked peer raise CommunicationError in seconds, not at the timeout."""
    _run(launch_ranks, "abort", 2, _write_job(tmp_path), tmp_path / "abort")
    result = json.loads((tmp_path / "abort" / "node0.jsonl").read_text())
    assert result["unblocked_s"] < 10.0, result
    assert result["latched"], "a second call must re-raise the first, latched error"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_abort_from_another_thread_ends_a_wait_on_a_hung_peer(
    tmp_path: Path, launch_ranks: Callable[..., None]
) -> None:
    """abort() on a control thread makes this rank's wait on a hung (not dead) peer raise at once."""
    _run(launch_ranks, "hang", 2, _write_job(tmp_path), tmp_path / "hang")
    result = json.loads((tmp_path / "hang" / "node0.jsonl").read_text())
    assert result["unblocked_s"] < 5.0, result
    assert "failure notice" in result["error"] and result["latched"]


if __name__ == "__main__":
    _mode, _rank, _world, _port, _config, _out = sys.argv[1:7]
    child(_mode, int(_rank), int(_world), int(_port), _config, _out)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_loss_after_a_completed_reconfiguration_replans_from_the_committed_plan(
    tmp_path: Path, reference: tuple[Path, Path], launch_ranks: Callable[..., None]
) -> None:
    """A node lost after a reconfiguration completed but before its first step: the survivors plan
    from the committed plan again, one sends a layer it gave up in the uncommitted plan, and the
    run stays equal to one process."""
    config, ref_dir = reference
    _run(launch_ranks, "redo", 3, config, tmp_path / "redo")
    assert_matches_reference(ref_dir, tmp_path / "redo", survivors=(1, 2))
    generations = [json.loads(line)["generation"] for line in (tmp_path / "redo" / "node1.jsonl").open()]
    assert generations == [0] + [2] * (STEPS - 1)
