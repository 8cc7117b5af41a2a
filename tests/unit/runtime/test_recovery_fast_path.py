"""The recovery fast path: one-round-trip barrier reads, prepared re-plans, prompt aborts, phase timing."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.runtime.config import job_config_from_dict
from oobleck.runtime.control import store as store_module
from oobleck.runtime.control.generation_sync import collect_states, publish_state, read_present, unpublished
from oobleck.runtime.control.link import WorkerLink
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.protocol import Channel
from oobleck.runtime.control.store import start_store_service, store_key
from oobleck.runtime.control.store_client import StoreClient, StoreClosedError
from oobleck.runtime.control.store_records import state_key, state_record
from oobleck.runtime.control.store_state import StoreState
from oobleck.runtime.elastic import abandon_when_superseded, stacks_if_stuck, stuck_build_after_s
from oobleck.runtime.engine import Engine
from oobleck.runtime.engine import comm as comm_module
from oobleck.runtime.engine.comm import Comm, CommunicationError
from oobleck.runtime.engine.standalone import plan_for_world
from oobleck.runtime.recovery_cache import ReconfigureCache, RegroupPrep
from oobleck.runtime.recovery_timing import RegroupClock, phases_ms

TOKEN = b"f" * 32


@pytest.fixture
def service():
    svc = start_store_service(TOKEN, "127.0.0.1")
    yield svc
    svc.close()


def client(svc) -> StoreClient:
    return StoreClient("127.0.0.1", svc.port, store_key(TOKEN), timeout=timedelta(seconds=5))


def _record(generation: int, node: int) -> str:
    return state_record(generation=generation, node=node, local_rank=0, plan=None, step=3, last=None)


# ---------------------------------------------------------------------- store: get_present
def test_get_present_returns_once_the_last_key_is_set():
    """get_present wakes when the last key is set, long before its timeout, with every value."""
    state = StoreState()
    state.set("a", b"1")
    threading.Timer(0.05, state.set, args=("b", b"2")).start()
    start = time.monotonic()
    assert state.get_present(["a", "b"], 5.0) == {"a": b"1", "b": b"2"}
    assert time.monotonic() - start < 2.0


def test_get_present_returns_what_is_there_at_the_timeout():
    """A missing key is no error: the reply holds the keys that are set."""
    state = StoreState()
    state.set("a", b"1")
    assert state.get_present(["a", "missing"], 0.01) == {"a": b"1"}


def test_client_get_present_round_trips_bytes(service):
    """Values of any bytes come back through the authenticated service unchanged."""
    store = client(service)
    store.set("k", b"\x00\xffraw")
    assert store.get_present(["k", "absent"], 0.01) == {"k": b"\x00\xffraw"}


def test_read_present_falls_back_to_check_and_get_on_other_stores():
    """A torch store without get_present is read key by key."""
    store = dist.HashStore()
    store.set("x", b"v")
    assert read_present(store, ["x", "y"], 0.01) == {"x": b"v"}


def test_the_state_barrier_waits_in_the_store_instead_of_polling(service, monkeypatch):
    """A barrier whose peers publish 0.3 s late costs a handful of store requests, not a 10 ms poll."""
    ops: list[str] = []
    real_execute = store_module.execute

    def counting(state: StoreState, request: dict[str, Any]) -> dict[str, Any]:
        ops.append(str(request.get("op")))
        return real_execute(state, request)

    monkeypatch.setattr(store_module, "execute", counting)
    target = Membership(4, (0, 1, 2))
    late = client(service)

    def publish_late() -> None:
        time.sleep(0.3)
        for node in (1, 2):
            late.set(state_key(4, node, 0), _record(4, node))

    threading.Thread(target=publish_late, daemon=True).start()
    store = client(service)
    publish_state(store, 4, node=0, local_rank=0, record=_record(4, 0))
    records = collect_states(store, target, node=0, superseded=lambda: False)
    assert records is not None and [r["node"] for r in records] == [0, 1, 2]
    barrier_ops = len(ops) - 3  # NOTE: the late publisher's two sets, this worker's own
    # NOTE: 0.3 s in 50 ms server-side waits is ~7 reads; a 10 ms client poll of check per key is > 30.
    assert barrier_ops <= 12, ops


def test_a_rendezvous_that_failed_names_the_members_that_never_published(service):
    """The world is joined after publishing, so a member without a record is one it waited for."""
    store = client(service)
    target = Membership(5, (0, 1, 2))
    for node in (0, 2):
        publish_state(store, 5, node=node, local_rank=0, record=_record(5, node))
    assert unpublished(store, target) == [1]
    publish_state(store, 5, node=1, local_rank=0, record=_record(5, 1))
    assert unpublished(store, target) == []


def test_a_world_joined_ahead_of_the_plan_is_reused_until_an_abort(monkeypatch):
    """configure() of the generation whose world was joined builds no second world; after an
    abort (the world destroyed) the next generation's configure() joins a new one."""
    job = job_config_from_dict(
        {
            "model": "tiny-gpt2",
            "data": {"source": "pydoc", "sequence_length": 8},
            "global_batch": 2,
            "microbatch_size": 2,
            "steps": 1,
        },
        source="test",
    )
    engine = Engine(job, node=0, device=torch.device("cpu"))
    inits: list[Any] = []
    real_init = engine.comm.init

    def counting(*args: Any, **kwargs: Any) -> None:
        inits.append(kwargs.get("key"))
        real_init(*args, **kwargs)

    monkeypatch.setattr(engine.comm, "init", counting)
    store = dist.HashStore()
    try:
        engine.join_world(0, {0: 0}, store, 1)
        plan = plan_for_world(job, engine.adapter, 1, store=store, rank=0)
        engine.configure(plan, 0, {0: 0}, store)
        assert inits == [(0, 0, 1)]
        engine.abort("test")
        engine.configure(plan, 1, {0: 0}, store)
        assert inits == [(0, 0, 1), (1, 0, 1)]
        assert engine.train_step(0).loss > 0
    finally:
        engine.close()


def _link_pair() -> tuple[WorkerLink, Channel]:
    """A worker's link and the agent's end of it, over a real socketpair."""
    ours, theirs = socket.socketpair()
    key = b"k" * 32
    return WorkerLink(Channel(ours, key, is_server=False, peer="agent")), Channel(
        theirs, key, is_server=True, peer="worker"
    )


def test_a_newer_generation_ends_a_world_rendezvous_in_progress(service):
    """A rank waiting in generation 2's world when generation 3 is announced (a join: no abort
    cuts the store) stops waiting at once instead of at the store timeout."""
    link, agent = _link_pair()
    store = StoreClient("127.0.0.1", service.port, store_key(TOKEN), timeout=timedelta(seconds=60))
    joined = threading.Event()
    threading.Thread(target=abandon_when_superseded, args=(link, store, 2, joined), daemon=True).start()
    threading.Timer(0.1, agent.send, args=(Membership(3, (0, 1, 2), joined=(2,)).to_message(),)).start()
    start = time.monotonic()
    with pytest.raises(StoreClosedError):
        store.wait(["gen2/rank1"])  # NOTE: the rendezvous's wait for a peer that went to generation 3
    assert time.monotonic() - start < 10.0
    joined.set()


def test_a_joined_world_keeps_its_store_when_a_newer_generation_comes(service):
    """Once the rendezvous is over the watcher leaves the store alone (the step's own abort decides)."""
    link, agent = _link_pair()
    store = client(service)
    joined = threading.Event()
    watcher = threading.Thread(target=abandon_when_superseded, args=(link, store, 2, joined))
    watcher.start()
    time.sleep(0.1)  # NOTE: the watcher is waiting for a newer generation
    joined.set()
    agent.send(Membership(3, (0, 1)).to_message())
    watcher.join(5.0)
    assert not watcher.is_alive()
    store.set("after", "1")
    assert store.get("after") == b"1"


# ---------------------------------------------------------------------- speculative re-plans
def _wait_filled(cache: ReconfigureCache) -> None:
    thread = cache._thread
    assert thread is not None
    thread.join(10)


def test_prepared_single_losses_are_the_planners_own_answers(tiny_planner: Planner):
    """Every single-node loss of the committed plan is answered from the cache, equal to planning now."""
    committed = tiny_planner.plan(range(4))
    cache = ReconfigureCache(tiny_planner)
    cache.prepare(Plan.from_dict(committed.to_dict(), gpus_per_node=1))
    _wait_filled(cache)
    for node in committed.nodes:
        cached = cache.reconfigure(committed, lost_nodes=(node,), joined_nodes=())
        fresh = tiny_planner.reconfigure(committed, lost_nodes=(node,))
        assert cached.plan == fresh.plan and cached.transfers == fresh.transfers
    assert cache.hits == len(committed.nodes)


def test_a_join_or_another_plan_is_planned_on_the_spot(tiny_planner: Planner):
    """Changes the cache was not prepared for miss it and still get the planner's answer."""
    committed = tiny_planner.plan(range(3))
    cache = ReconfigureCache(tiny_planner)
    cache.prepare(committed)
    _wait_filled(cache)
    joined = cache.reconfigure(committed, lost_nodes=(), joined_nodes=(3,))
    assert joined.plan == tiny_planner.reconfigure(committed, joined_nodes=(3,)).plan
    other = tiny_planner.plan(range(4))
    assert cache.reconfigure(other, lost_nodes=(0,), joined_nodes=()).plan == (
        tiny_planner.reconfigure(other, lost_nodes=(0,)).plan
    )
    assert cache.hits == 0


# ---------------------------------------------------------------------- prompt aborts
class _HangingWork:
    """A work handle whose wait blocks until released (a peer that never answers)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def wait(self) -> bool:
        self.release.wait(30)
        return True

    def is_completed(self) -> bool:
        return self.release.is_set()


def test_an_abort_wakes_a_waiting_collective_at_once(monkeypatch):
    """An abort from another thread ends a gloo wait at once, not at the next latch check."""
    monkeypatch.setattr(comm_module, "_ABORT_CHECK_S", 20.0)
    comm = Comm(backend="gloo")
    work = _HangingWork()
    threading.Timer(0.05, comm.abort, args=("notice",)).start()
    start = time.monotonic()
    with pytest.raises(CommunicationError, match="notice"):
        comm.wait("all_reduce", [work])
    assert time.monotonic() - start < 10.0
    work.release.set()


class _CompletesAsANoticeLands:
    """A real collective's handle whose wait ends as a loss notice aborts the world: the collective
    completed on this rank, and the abort latched before the training thread saw it complete."""

    def __init__(self, work: Any, comm: Comm) -> None:
        self.work, self.comm = work, comm

    def wait(self) -> bool:
        done = self.work.wait()
        self.comm.abort("notice: node 0 lost")
        return done

    def is_completed(self) -> bool:
        return self.work.is_completed()


def test_a_collective_that_completed_is_not_undone_by_a_later_abort(tmp_path):
    """The step's last all-reduce completed on this rank; a notice that lands before the training
    thread wakes must not fail it (it did: the completed step stayed uncommitted on this rank)."""
    comm = Comm(backend="gloo")
    comm.init(dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1, device=torch.device("cpu"))
    totals = torch.tensor([3.0, 4.0], dtype=torch.float64)
    work = comm.call("all_reduce", dist.all_reduce, totals, async_op=True)
    comm.wait("loss/norm all_reduce", [_CompletesAsANoticeLands(work, comm)])
    assert totals.tolist() == [3.0, 4.0]
    with pytest.raises(CommunicationError, match="node 0 lost"):  # NOTE: the next call sees the notice.
        comm.raise_if_failed()
    assert not dist.is_initialized()


def test_a_world_after_a_failed_rendezvous_has_the_name_its_peers_give_it():
    """A rendezvous cut short (a notice, a timeout) must not shift the name of this rank's next
    world: peers that never failed rendezvous under the first name (``0``)."""
    comm = Comm(backend="gloo", timeout=timedelta(seconds=0.5))
    with pytest.raises(CommunicationError):
        comm.init(
            dist.HashStore(), rank=0, world_size=2, device=torch.device("cpu")
        )  # NOTE: rank 1 never comes
    store = dist.HashStore()
    comm.init(dist.PrefixStore("gen1", store), rank=0, world_size=1, device=torch.device("cpu"))
    try:
        assert store.check(["gen1/0//cpu//0/0"]), "the world was not named as a fresh process names it"
    finally:
        comm.destroy()


def test_a_group_of_every_rank_is_the_default_group(monkeypatch, tmp_path):
    """No second mesh is built for a group spanning the whole world: it is the default group."""
    comm = Comm(backend="gloo")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    comm.init(store, rank=0, world_size=1, device=torch.device("cpu"))
    try:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("new_group called for the world")

        monkeypatch.setattr(dist, "new_group", refuse)
        comm.new_groups([(0,)])
        assert comm.group((0,)) is dist.group.WORLD
        probe = torch.ones(1)
        comm.run("all_reduce", dist.all_reduce, probe, group=comm.group((0,)))
        assert probe.item() == 1.0
    finally:
        comm.destroy()


# ---------------------------------------------------------------------- phase timing
def test_phases_are_the_gaps_between_marks():
    """Each phase is its end mark minus its start mark, in ms; phases without both marks are absent."""
    clock = RegroupClock()
    clock.reset(100.0)
    marks = {"unblocked": 2, "regroup": 10, "store": 11, "init_group": 25, "barrier": 31}
    for name, at in marks.items():
        clock.mark(name, 100.0 + at / 1e3)
    phases = phases_ms(clock.marks)
    expected = {"unblock": 2, "await": 8, "notice_to_regroup": 10, "store": 1, "init_group": 14, "barrier": 6}
    assert phases == pytest.approx(expected)
    assert "plan" not in phases


# ---------------------------------------------------------------------- readying the next regroup
def test_prep_hands_over_one_standby_client_and_survives_a_master_that_is_down(service, tiny_planner):
    """The standby client is handed over once; a failed connect leaves none and training goes on."""
    prep = RegroupPrep(lambda: client(service))
    committed = tiny_planner.plan(range(4))
    prep.after_step(tiny_planner, committed)
    standby = prep.take_store()
    assert isinstance(standby, StoreClient) and prep.take_store() is None
    standby.set("alive", b"1")

    def refused() -> StoreClient:
        raise ConnectionRefusedError("master down")

    down = RegroupPrep(refused)
    down.after_step(tiny_planner, committed)
    assert down.take_store() is None
    change, _ = down.reconfigure(tiny_planner, committed, (0,), ())
    assert change.plan == tiny_planner.reconfigure(committed, lost_nodes=(0,)).plan


def test_speculative_replans_do_not_log_losses(tiny_planner, caplog):
    """Planning ahead logs no "reconfigured: lost" line (no node was lost); a real re-plan still does."""
    committed = tiny_planner.plan(range(4))
    cache = ReconfigureCache(tiny_planner)
    with caplog.at_level("INFO", logger="oobleck.planning.reconfigure"):
        cache.prepare(committed)
        _wait_filled(cache)
        assert "reconfigured" not in caplog.text
        cache.reconfigure(committed, lost_nodes=(0, 1), joined_nodes=())
    assert "reconfigured: lost [0, 1]" in caplog.text


@pytest.mark.parametrize(
    ("worker_s", "barrier_s"), [(120.0, 120.0), (600.0, 120.0), (30.0, 120.0), (5.0, 5.0)]
)
def test_a_stuck_build_reports_after_one_bounded_wait_and_before_the_peers_drop_it(worker_s, barrier_s):
    """The dump comes later than one wait of a build (its bound: a worker timeout) and before the
    peers drop the stuck node (their rendezvous, then the next barrier): the old fixed three worker
    timeouts fired at 360 s where the node was dropped at 240 s, and at 1800 s for a 600 s timeout."""
    after = stuck_build_after_s(worker_s, barrier_s)
    assert worker_s < after < worker_s + barrier_s


def test_a_stuck_build_dumps_every_threads_stack_once_and_a_prompt_one_none(capfd):
    """A generation's build that outlasts its bound leaves the stacks a hang report needs; one
    that ends in time leaves nothing (the timer is cancelled)."""
    with stacks_if_stuck(0.05):
        pass
    time.sleep(0.1)
    assert capfd.readouterr().err == ""
    with stacks_if_stuck(0.05):
        time.sleep(0.3)
    err = capfd.readouterr().err
    assert "most recent call first" in err and "test_recovery_fast_path.py" in err
    assert err.count("Timeout (") == 1
