"""Tests for the master's pure membership state machine: scenarios, then random event sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_events import (
    Announce,
    Decision,
    Disconnect,
    Done,
    Evict,
    Finish,
    Heartbeat,
    JobError,
    LossCause,
    Ready,
    Register,
    Regroup,
    Reject,
    Resumed,
    Submit,
    Tick,
    Welcome,
    WorkerExit,
)
from oobleck.runtime.control.membership_machine import MembershipMachine

JOB = {"type": "job", "config_path": "job.yaml", "config_text": "steps: 1\n"}


class Driver:
    """Feeds a machine events at explicit times and keeps every decision."""

    def __init__(self, **kwargs: float) -> None:
        self.machine = MembershipMachine(**kwargs)  # type: ignore[arg-type]
        self.now = 100.0
        self.decisions: list[Decision] = []

    def __call__(self, event, dt: float = 0.0) -> list[Decision]:
        self.now += dt
        out = self.machine.step(event, self.now, 1000.0 + self.now)
        self.decisions += out
        return out

    def announced(self) -> list[Membership]:
        return [d.membership for d in self.decisions if isinstance(d, Announce)]

    def start(self, nodes: int = 4) -> None:
        self(Submit(JOB, nodes, 60.0))
        for n in range(nodes):
            self(Register(conn=n, index=n, host="h", pid=10 + n, slots=1))
        for n in range(nodes):
            self(Ready(n))


def test_job_starts_when_expected_nodes_are_ready():
    """Generation 0 is announced once the expected number of registered nodes are ready."""
    d = Driver()
    d(Submit(JOB, 2, 60.0))
    assert isinstance(d(Register(conn=7, index=None, host="h", pid=1, slots=1))[0], Welcome)
    d(Register(conn=8, index=None, host="h", pid=2, slots=1))
    d(Ready(0))
    assert d.announced() == []
    d(Ready(1))
    (gen0,) = d.announced()
    assert gen0.generation == 0 and gen0.members == (0, 1)


def test_silence_past_the_limit_loses_the_node_once():
    """A node silent for missed_heartbeats intervals is evicted once and dropped by one new generation."""
    d = Driver(heartbeat_interval_s=0.5, missed_heartbeats=3)
    d.start(3)
    for _ in range(8):
        for n in (0, 1):
            d(Heartbeat(n), 0.1)
        d(Tick(), 0.1)
    evicted = [x for x in d.decisions if isinstance(x, Evict)]
    assert [(e.node, e.cause) for e in evicted] == [(2, LossCause.SILENCE)]
    assert [m.members for m in d.announced()] == [(0, 1, 2), (0, 1)]


def test_master_stall_does_not_count_as_silence():
    """After a 5 s gap in the master's clock, its first tick (before queued heartbeats) loses nobody."""
    d = Driver(heartbeat_interval_s=0.5, missed_heartbeats=3)
    d.start(4)
    d(Tick(), 0.2)
    d(Tick(), 5.0)
    for n in range(4):
        d(Heartbeat(n))
    d(Tick(), 0.2)
    assert not [x for x in d.decisions if isinstance(x, Evict)]


def test_worker_exit_and_disconnect_lose_the_node_once():
    """A non-zero worker exit loses the node; its later disconnect changes nothing."""
    d = Driver()
    d.start(3)
    d(WorkerExit(1, code=1))
    d(Disconnect(1, "EOF"))
    assert [m.lost for m in d.announced()] == [(), (1,)]


def test_regroup_with_missing_drops_the_silent_node():
    """A regroup naming a missing node drops it instead of repeating the same generation."""
    d = Driver()
    d.start(4)
    d(Regroup(0, generation=0, missing=(3,)))
    last = d.announced()[-1]
    assert last.generation == 1 and last.members == (0, 1, 2) and last.lost == (3,)
    evicts = [x for x in d.decisions if isinstance(x, Evict)]
    assert [(e.node, e.cause) for e in evicts] == [(3, LossCause.MISSING)]


def test_regroup_without_missing_keeps_the_members():
    """A plain regroup announces a fresh generation with the same members; a stale one is ignored."""
    d = Driver()
    d.start(2)
    d(Regroup(0, generation=0))
    d(Regroup(1, generation=0))
    assert [(m.generation, m.members) for m in d.announced()] == [(0, (0, 1)), (1, (0, 1))]


def test_regroup_naming_only_itself_or_strangers_keeps_the_members():
    """Missing entries that are the reporter itself or not members change nothing but the generation."""
    d = Driver()
    d.start(2)
    d(Regroup(0, generation=0, missing=(0, 7)))
    assert [(m.generation, m.members, m.lost) for m in d.announced()] == [(0, (0, 1), ()), (1, (0, 1), ())]


def test_slots_mismatch_is_rejected():
    """An agent with a different slot count from the job's nodes is refused, the others unaffected."""
    d = Driver()
    d.start(2)
    out = d(Register(conn=9, index=None, host="h", pid=3, slots=4))
    assert isinstance(out[0], Reject) and "slots=4" in out[0].reason


def test_all_done_completes_and_shuts_down():
    """When every member reports done the job completes once and every agent is told to shut down."""
    d = Driver()
    d.start(2)
    d(Done(0))
    d(Done(1))
    finishes = [x for x in d.decisions if isinstance(x, Finish)]
    assert finishes == [Finish("completed", "every worker finished")]
    assert sum(1 for x in d.decisions if getattr(x, "message", {}).get("type") == "shutdown") == 2


def test_job_error_fails_the_job_once_without_losing_a_node():
    """A run-dir error fails the job once; no node is declared lost for it."""
    d = Driver()
    d.start(2)
    d(JobError("cannot write metrics.jsonl: No space left on device"))
    d(JobError("again"))
    assert [x.outcome for x in d.decisions if isinstance(x, Finish)] == ["failed"]
    assert not [x for x in d.decisions if isinstance(x, Evict)]


def test_resumed_master_adopts_the_generation_without_announcing():
    """Re-registering members of the adopted generation are welcomed and no generation is announced."""
    adopted = Membership(3, (0, 1, 2), slots=1)
    d = Driver()
    d(Resumed(JOB, 3, adopted, grace_s=30.0))
    for n in range(3):
        out = d(Register(conn=n, index=n, host="h", pid=n, slots=1, resumed=adopted))
        assert isinstance(out[0], Welcome) and out[0].node == n
    assert not d.machine.adopting
    assert d.announced() == []
    d(WorkerExit(2, code=-9))
    assert d.announced()[-1].generation == 4 and d.announced()[-1].members == (0, 1)


def test_resumed_master_loses_members_that_do_not_come_back():
    """A member that does not re-register within the grace period is lost in one new generation."""
    adopted = Membership(2, (0, 1, 2), slots=1)
    d = Driver()
    d(Resumed(JOB, 3, adopted, grace_s=10.0))
    d(Register(conn=0, index=0, host="h", pid=1, slots=1, resumed=adopted))
    d(Register(conn=1, index=1, host="h", pid=2, slots=1, resumed=adopted))
    d(Regroup(0, generation=2))
    for _ in range(12):
        d(Heartbeat(0), 0.5)
        d(Heartbeat(1))
        d(Tick(), 0.5)
    (gen3,) = d.announced()
    assert gen3.generation == 3 and gen3.members == (0, 1) and gen3.lost == (2,)


def test_evicted_node_cannot_come_back_with_its_old_workers():
    """A lost node re-registering with its old generation is refused."""
    d = Driver()
    d.start(2)
    d(Disconnect(1, "EOF"))
    out = d(Register(conn=5, index=1, host="h", pid=2, slots=1, resumed=d.announced()[0]))
    assert isinstance(out[0], Reject)


# ---------------------------------------------------------------------- properties
NODES = 5
step_event = st.one_of(
    st.tuples(st.just("hb"), st.integers(0, NODES - 1)),
    st.tuples(st.just("ready"), st.integers(0, NODES - 1)),
    st.tuples(st.just("exit"), st.integers(0, NODES - 1)),
    st.tuples(st.just("disc"), st.integers(0, NODES - 1)),
    st.tuples(st.just("regroup"), st.integers(0, NODES - 1), st.lists(st.integers(0, NODES - 1), max_size=2)),
    st.tuples(st.just("register"), st.integers(0, NODES - 1)),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
    st.tuples(st.just("stall"), st.floats(1.0, 12.0)),
    st.tuples(st.just("done"), st.integers(0, NODES - 1)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step_event, max_size=60))
def test_random_events_keep_the_invariants(events):
    """Under any events generations grow by one, members are registered, each loss counts once."""
    d = Driver(heartbeat_interval_s=0.5, missed_heartbeats=3)
    d.start(3)
    registered = {0, 1, 2}
    conn = 100
    for kind, *args in events:
        if kind == "hb":
            d(Heartbeat(args[0]), 0.05)
        elif kind == "ready":
            d(Ready(args[0]))
        elif kind == "exit":
            d(WorkerExit(args[0], code=1))
        elif kind == "disc":
            d(Disconnect(args[0], "EOF"))
        elif kind == "regroup":
            gen = d.machine.membership.generation if d.machine.membership else 0
            d(Regroup(args[0], gen, tuple(args[1])))
        elif kind == "register":
            conn += 1
            out = d(Register(conn=conn, index=args[0], host="h", pid=conn, slots=1))
            registered |= {x.node for x in out if isinstance(x, Welcome)}
        elif kind == "tick" or kind == "stall":
            d(Tick(), args[0])
        elif kind == "done":
            d(Done(args[0]))
    gens = [m.generation for m in d.announced()]
    assert gens == list(range(len(gens)))
    lost_once: list[int] = []
    for m in d.announced():
        assert set(m.members) <= registered
        lost_once += m.lost
        assert not set(m.lost) & set(m.members)
    evicted = [x.node for x in d.decisions if isinstance(x, Evict)]
    welcomed = [x.node for x in d.decisions if isinstance(x, Welcome)]
    for node in set(evicted):
        # NOTE: a node id can come back as a fresh agent; each incarnation is lost at most once.
        assert evicted.count(node) <= welcomed.count(node)
    assert len([x for x in d.decisions if isinstance(x, Finish)]) <= 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["run", "stall"]), st.floats(0.5, 12.0)),
        min_size=1,
        max_size=20,
    )
)
def test_no_node_dies_for_the_masters_own_stall(phases):
    """Agents that heartbeat every interval are never declared dead, however the master is stalled."""
    d = Driver(heartbeat_interval_s=0.5, missed_heartbeats=3)
    d.start(4)
    for kind, length_s in phases:
        if kind == "stall":
            # NOTE: the worst order: the monitor wakes first, then the queued heartbeats are read.
            d(Tick(), length_s)
            for n in range(4):
                d(Heartbeat(n))
            continue
        for _ in range(int(length_s / 0.125)):
            d(Tick(), 0.125)
            if int(d.now * 8) % 4 == 0:
                for n in range(4):
                    d(Heartbeat(n))
    assert not [x for x in d.decisions if isinstance(x, Evict)]
