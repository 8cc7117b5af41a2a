"""The master's membership decisions as a pure state machine: events in, decisions out, time an input.

The master's I/O shell (``control/master.py``) turns socket reads, its monitor's ticks and file-system
errors into :data:`Event` values, feeds them to :meth:`MembershipMachine.step` one at a time under
one lock, and carries out the :data:`Decision` values it returns (sends, closes, file writes). This
module has no sockets, threads or clocks: every event comes with the master's monotonic ``now``
(liveness) and wall-clock ``wall`` (records), so random event sequences can drive it in tests.

Assumptions:
- Node ids are stable for the life of a job; a node declared lost is never readmitted under the
  same id with its old workers (a re-registering agent that reports a generation is refused).
- Silence is judged in *master-observed* time: the gap between two consecutive events counts
  towards a node's silence only when it is short (``stall_after_s``). A longer gap means the master
  itself was stopped or starved (SIGSTOP, swap, a long GC), and during it the master could not read
  what the agents sent, so it never counts against them (DESIGN: "silence that was the master's own
  never counts against a node").
- A master resumed on a run dir adopts the generation it last announced (or the newest one a
  re-registering agent reports) without announcing a new one, so running workers keep training;
  members that do not come back within ``resume_grace_s`` are declared lost then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oobleck.runtime.control.devices import slots_refusal
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_events import (
    AgentsChanged,
    Announce,
    Decision,
    Disconnect,
    Done,
    Event,
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
    Send,
    Submit,
    Tick,
    Welcome,
    WorkerExit,
    Workers,
)


@dataclass(slots=True)
class NodeState:
    """What the machine knows about one registered node."""

    node: int
    host: str
    pid: int
    slots: int
    alive: bool = True
    ready: bool = False
    done: bool = False
    silence_s: float = 0.0
    """Master-observed time since its last message."""
    worker_pids: tuple[int, ...] = ()


@dataclass(slots=True)
class MembershipMachine:
    """Decides node ids, liveness, generations and the job outcome from events."""

    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 3
    stall_after_s: float | None = None
    """An event gap longer than this is the master's own stall (default: one heartbeat interval)."""
    nodes: dict[int, NodeState] = field(default_factory=dict)
    membership: Membership | None = None
    job: dict[str, Any] | None = None
    expected_agents: int = 0
    outcome: str | None = None
    lost: set[int] = field(default_factory=set)
    _now: float | None = None
    _wall: float = 0.0
    _register_deadline: float | None = None
    _resume_deadline: float | None = None
    _pending_regroup: str = ""
    _hardware: str = "cpu"
    _gpus_per_node: int | None = None

    @property
    def silence_limit_s(self) -> float:
        """Master-observed silence after which a node is declared dead."""
        return self.heartbeat_interval_s * self.missed_heartbeats

    @property
    def adopting(self) -> bool:
        """Whether a resumed master still waits for members of the adopted generation."""
        return self._resume_deadline is not None

    def step(self, event: Event, now: float, wall: float) -> list[Decision]:
        """Apply one event.

        Args:
            event: What happened.
            now: The master's monotonic clock when it handled the event (never decreasing).
            wall: Wall-clock time, for the records only.

        Returns:
            What the shell must do, in order.
        """
        out: list[Decision] = []
        self._advance(now, wall)
        if isinstance(event, Register):
            self._register(event, out)
            return out
        node = getattr(event, "node", None)
        if node is not None:
            state = self.nodes.get(node)
            if state is None or not state.alive:
                return out  # NOTE: a late message from a node already lost changes nothing.
            state.silence_s = 0.0
        match event:
            case Heartbeat():
                pass
            case Workers(node=n, pids=pids):
                self.nodes[n].worker_pids = pids
                out.append(AgentsChanged())
            case Ready(node=n):
                self._ready(n, out)
            case Done(node=n):
                self.nodes[n].done = True
                self._check_done(out)
            case WorkerExit(node=n, code=code, local_rank=rank) if code != 0:
                self._lose([n], LossCause.WORKER_EXIT, f"worker {rank} exited with code {code}", out)
            case WorkerExit():
                pass
            case Disconnect(node=n, reason=reason):
                self._lose([n], LossCause.DISCONNECT, f"connection lost ({reason})", out)
            case Regroup():
                self._regroup(event, out)
            case Submit():
                self._submit(event, out)
            case Resumed():
                self._resumed(event)
            case Tick():
                self._tick(out)
            case JobError(reason=reason):
                self._finish("failed", reason, out)
        return out

    # ------------------------------------------------------------------ time
    def _advance(self, now: float, wall: float) -> None:
        stall = self.heartbeat_interval_s if self.stall_after_s is None else self.stall_after_s
        if self._now is not None:
            gap = now - self._now
            if 0 < gap <= stall:
                for state in self.nodes.values():
                    state.silence_s += gap
        self._now = now if self._now is None else max(now, self._now)
        self._wall = wall

    def _tick(self, out: list[Decision]) -> None:
        assert self._now is not None
        silent = [n for n, s in sorted(self.nodes.items()) if s.alive and s.silence_s >= self.silence_limit_s]
        if silent:
            self._lose(silent, LossCause.SILENCE, f"no heartbeat for {self.silence_limit_s:.1f} s", out)
        if self._resume_deadline is not None and self._now >= self._resume_deadline:
            self._end_adoption(out)
        if (
            self.outcome is None
            and self.membership is None
            and self._register_deadline is not None
            and self._now >= self._register_deadline
        ):
            ready = sum(s.alive and s.ready for s in self.nodes.values())
            self._finish(
                "failed", f"only {ready} of {self.expected_agents} agents registered and ready in time", out
            )

    # ------------------------------------------------------------------ registration
    def _register(self, event: Register, out: list[Decision]) -> None:
        if event.slots < 1:
            out.append(Reject(event.conn, f"slots={event.slots}; need >= 1"))
            return
        alive = [s for s in self.nodes.values() if s.alive]
        job_slots = alive[0].slots if alive else (self.membership.slots if self.membership else event.slots)
        if event.slots != job_slots:
            out.append(
                Reject(
                    event.conn,
                    f"slots={event.slots} but the job's nodes have slots={job_slots}: nodes must be "
                    f"homogeneous (the planner prices one node type); give every agent slots={job_slots}",
                )
            )
            return
        refusal = self._slots_refusal(event.slots)
        if refusal is not None:
            out.append(Reject(event.conn, refusal))
            if self.membership is None:
                # NOTE: every agent of the hostfile has these slots: waiting for them would hang
                # until the registration deadline, so the job fails now with the reason.
                self._finish("failed", refusal, out)
            return
        if event.resumed is not None:
            self._reregister(event, out)
            return
        index = event.index
        taken = {n for n, s in self.nodes.items() if s.alive}
        if index is not None and index >= 0 and index not in taken:
            node = index
        else:
            node = max([*self.nodes, *self.lost, -1]) + 1
        self.nodes[node] = NodeState(node, event.host, event.pid, event.slots)
        self.lost.discard(node)  # NOTE: a fresh agent (new workers) under a lost id is a join.
        out += [Welcome(event.conn, node), AgentsChanged()]
        if self.job is not None and self.outcome is None:
            out.append(Send(node, self.job))

    def _slots_refusal(self, slots: int) -> str | None:
        """Why ``slots`` does not fit the submitted job's devices per node (None: it does, or no job)."""
        if self.job is None:
            return None
        return slots_refusal(slots, self._hardware, self._gpus_per_node)

    def _reregister(self, event: Register, out: list[Decision]) -> None:
        """An agent whose workers kept running while the master was away comes back."""
        assert event.resumed is not None
        node = event.index
        current = self.membership
        if node is None or node in self.lost or (node in self.nodes and self.nodes[node].alive):
            out.append(Reject(event.conn, f"node {node} was removed from the job or is registered twice"))
            return
        if current is None or event.resumed.generation > current.generation:
            # NOTE: the previous master announced a generation it did not live to record.
            self.membership = current = event.resumed
        if node not in current.members:
            out.append(Reject(event.conn, f"node {node} is not a member of generation {current.generation}"))
            return
        self.nodes[node] = NodeState(node, event.host, event.pid, event.slots, ready=True, done=event.done)
        out += [Welcome(event.conn, node), AgentsChanged()]
        if event.resumed.generation < current.generation:
            out.append(Send(node, current.to_message()))
        if self.adopting and all(n in self.nodes and self.nodes[n].alive for n in current.members):
            self._end_adoption(out)

    def _ready(self, node: int, out: list[Decision]) -> None:
        self.nodes[node].ready = True
        if self.outcome is not None or self.job is None or self.adopting:
            return
        if self.membership is None:
            self._maybe_start(out)
        elif any(self.nodes[n].done for n in self.membership.members if n in self.nodes):
            return  # NOTE: the job is finishing; a join now would only delay the end.
        elif node not in self.membership.members:
            self._new_generation(out, joined=(node,), reason=f"node {node} joined")

    def _submit(self, event: Submit, out: list[Decision]) -> None:
        if self.job is not None and self.outcome is None:
            raise ValueError("a job is already running on this master")
        self.job, self.expected_agents, self.outcome = event.job, event.expected_agents, None
        self._hardware, self._gpus_per_node = event.hardware, event.gpus_per_node
        self.membership, self.lost = None, set()
        assert self._now is not None
        self._register_deadline = self._now + event.register_timeout_s
        wrong = [s for s in self.nodes.values() if s.alive and self._slots_refusal(s.slots)]
        if wrong:
            self._finish("failed", str(self._slots_refusal(wrong[0].slots)), out)
            return
        for n, state in sorted(self.nodes.items()):
            if state.alive:
                out.append(Send(n, event.job))
        self._maybe_start(out)

    def _resumed(self, event: Resumed) -> None:
        assert self._now is not None
        self.job, self.expected_agents, self.membership = event.job, event.expected_agents, event.adopted
        if event.job is None:
            return
        if event.adopted is None:
            # NOTE: the job had not started; agents re-register fresh and it starts as submitted.
            self._register_deadline = self._now + event.grace_s
        else:
            self._resume_deadline = self._now + event.grace_s

    def _maybe_start(self, out: list[Decision]) -> None:
        ready = sorted(n for n, s in self.nodes.items() if s.alive and s.ready)
        if self.job is None or self.membership is not None or len(ready) < self.expected_agents:
            return
        slots = self.nodes[ready[0]].slots
        self.membership = Membership(
            0, tuple(ready), joined=tuple(ready), detected_at=self._wall, reason="job start", slots=slots
        )
        out.append(Announce(self.membership))

    # ------------------------------------------------------------------ changes
    def _end_adoption(self, out: list[Decision]) -> None:
        """Close the resume window: lose members that did not come back, apply queued changes."""
        self._resume_deadline = None
        current = self.membership
        if self.outcome is not None:
            return
        if current is None:
            self._maybe_start(out)
            return
        missing = [n for n in current.members if n not in self.nodes and n not in self.lost]
        self.lost.update(missing)
        lost = tuple(n for n in current.members if n in self.lost)
        joined = tuple(
            n for n, s in sorted(self.nodes.items()) if s.alive and s.ready and n not in current.members
        )
        reason = self._pending_regroup
        if missing:
            reason = f"node(s) {missing} lost: did not re-register with the resumed master"
        if lost or joined or reason:
            self._new_generation(out, lost=lost, joined=joined, reason=reason or "nodes joined")
            return
        self._check_done(out)

    def _regroup(self, event: Regroup, out: list[Decision]) -> None:
        current = self.membership
        if self.outcome is not None or current is None or event.generation != current.generation:
            return  # NOTE: a request about an older generation is already answered.
        if self.adopting:
            self._pending_regroup = f"regroup requested by node {event.node}"
            return
        # NOTE: a node the barrier waited for past its bound is lost: repeating an identical regroup
        # would wait for it again, forever (the claim-then-die livelock of issue 10).
        silent = [n for n in event.missing if n in current.members and n != event.node]
        if silent:
            self._lose(
                sorted(set(silent)),
                LossCause.MISSING,
                f"missing from generation {current.generation}'s barrier (reported by node {event.node})",
                out,
            )
            return
        self._new_generation(out, reason=f"regroup requested by node {event.node}")

    def _lose(self, nodes: list[int], cause: LossCause, reason: str, out: list[Decision]) -> None:
        fresh = [n for n in nodes if n in self.nodes and self.nodes[n].alive]
        if not fresh:
            return
        for n in fresh:
            self.nodes[n].alive = False
            out.append(Evict(n, cause, reason))
        out.append(AgentsChanged())
        current = self.membership
        if self.outcome is not None or current is None:
            return
        dropped = tuple(n for n in fresh if n in current.members and not self.nodes[n].done)
        if not dropped:
            return
        self.lost.update(dropped)
        text = f"node(s) {list(dropped)} lost: {reason}"
        if self.adopting:
            # NOTE: decided when the resume window closes, together with members that never came back.
            self._pending_regroup = self._pending_regroup or text
            return
        self._new_generation(out, lost=dropped, reason=text)

    def _new_generation(
        self, out: list[Decision], *, lost: tuple[int, ...] = (), joined: tuple[int, ...] = (), reason: str
    ) -> None:
        assert self.membership is not None
        members = tuple(sorted((set(self.membership.members) - set(lost)) | set(joined)))
        self.membership = Membership(
            self.membership.generation + 1,
            members,
            lost,
            joined,
            self._wall,
            self._wall if lost else 0.0,
            reason,
            self.membership.slots,
        )
        self._pending_regroup = ""
        if not members:
            self._finish("failed", f"no nodes left ({reason})", out)
            return
        out.append(Announce(self.membership))
        self._check_done(out)

    def _check_done(self, out: list[Decision]) -> None:
        if self.membership is None or self.outcome is not None or self.adopting:
            return
        alive = [n for n in self.membership.members if n in self.nodes and self.nodes[n].alive]
        if alive and all(self.nodes[n].done for n in alive):
            self._finish("completed", "every worker finished", out)

    def _finish(self, outcome: str, reason: str, out: list[Decision]) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        out.append(Finish(outcome, reason))
        for n, state in sorted(self.nodes.items()):
            if state.alive:
                out.append(Send(n, {"type": "shutdown"}))
                # NOTE: told to shut down, the node takes no part in a daemon's next job (it would
                # count as ready with the old job's workers); its later messages change nothing.
                state.alive = False
