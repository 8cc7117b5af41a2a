"""The master: rendezvous store, agent registry, liveness, membership generations, job outcome.

Assumptions:
- One job at a time. Agents register (hostfile index = node id when given, else the next free id),
  heartbeat, and report worker exits; the master alone decides membership and broadcasts every
  change as a new generation. It never plans: workers derive plans from the membership.
- Failure = TCP disconnect OR ``missed_heartbeats`` silent intervals OR a worker exiting non-zero
  under a live agent. A failed agent's connection is closed (fencing: a hung node that wakes up
  finds itself cut off and exits).
- The TCPStore it hosts is unauthenticated and binds every interface (a torch limitation); only the
  control channel is authenticated. ``master.json`` holds the address and ports, never the token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from oobleck.runtime.control.launchers import LaunchedAgent
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.protocol import (
    HANDSHAKE_TIMEOUT_S,
    Channel,
    ConnectionClosedError,
    ProtocolError,
)
from oobleck.runtime.control.records import append_jsonl, write_json_atomic
from oobleck.runtime.control.server import ControlServer
from oobleck.runtime.control.submission import JobSpec

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class MasterConfig:
    """Where the master listens and how it judges liveness."""

    run_dir: Path
    """Holds master.json, agents.json, agent logs, metrics.jsonl, errors/."""
    host: str = "127.0.0.1"
    """Bind address of the control server; loopback unless a user token is configured."""
    port: int = 0
    """Control port; 0 picks a free one (written to master.json)."""
    heartbeat_interval_s: float = 0.5
    """Agents send a heartbeat this often."""
    missed_heartbeats: int = 3
    """An agent silent for this many intervals is declared dead (default 1.5 s)."""
    register_timeout_s: float = 120.0
    """Longest to wait for the expected number of agents before the job fails."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0 or self.missed_heartbeats < 1:
            raise ValueError("heartbeat_interval_s must be > 0 and missed_heartbeats >= 1")


@dataclass(slots=True)
class AgentRecord:
    """What the master knows about one registered agent (one node)."""

    node: int
    host: str
    pid: int
    slots: int
    channel: Channel
    last_seen: float
    last_seen_wall: float
    worker_pids: list[int] = field(default_factory=list)
    ready: bool = False
    """All its workers have built their engine and wait for a membership."""
    alive: bool = True
    done: bool = False


class Master:
    """Runs the control server and the store; tracks agents; decides membership."""

    def __init__(self, config: MasterConfig, token: bytes, *, advertise_host: str | None = None) -> None:
        """Bind the store and the control server, write master.json, start the liveness monitor.

        Args:
            config: Bind address, run directory, liveness settings.
            token: The job's shared secret (authenticates agents and submitters).
            advertise_host: Address agents should dial (default: the bind address, or this
                machine's name when binding every interface).
        """
        self.config = config
        self.token = token
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self.agents: dict[int, AgentRecord] = {}
        self.job: JobSpec | None = None
        self.expected_agents = 0
        self.membership: Membership | None = None
        self.outcome: str | None = None
        self.first_error: dict[str, Any] | None = None
        self.launched: list[LaunchedAgent] = []
        self._next_node = 0
        self._closed = threading.Event()
        self.store = dist.TCPStore(
            config.host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30)
        )
        self.server = ControlServer(token, self._handle, host=config.host, port=config.port)
        self.address = advertise_host or (
            config.host if config.host not in ("0.0.0.0", "::") else os.uname()[1]
        )
        write_json_atomic(
            config.run_dir / "master.json",
            {
                "address": self.address,
                "port": self.server.port,
                "store_port": self.store.port,
                "pid": os.getpid(),
            },
        )
        self._monitor = threading.Thread(target=self._watch_heartbeats, name="master-monitor", daemon=True)
        self._monitor.start()

    # ----------------------------------------------------------------- job lifecycle
    def submit(self, job: JobSpec, expected_agents: int) -> None:
        """Accept a job; it starts once ``expected_agents`` agents are registered.

        Args:
            job: The validated job.
            expected_agents: Agents to wait for before generation 0.

        Raises:
            RuntimeError: A job is already running.
        """
        with self._cond:
            if self.job is not None and self.outcome is None:
                raise RuntimeError("a job is already running on this master")
            self.job, self.expected_agents, self.outcome, self.first_error = job, expected_agents, None, None
            self.membership = None
            for record in self.agents.values():
                if record.alive:
                    self._send(record, job.to_message())
            self._maybe_start()

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the job completes or fails (or ``timeout_s`` passes).

        Returns:
            ``"completed"``, ``"failed"``, or ``"timeout"``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        registered_by = time.monotonic() + self.config.register_timeout_s
        with self._cond:
            while self.outcome is None:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return "timeout"
                if self.membership is None and now >= registered_by:
                    alive = sum(r.alive for r in self.agents.values())
                    self._finish(
                        "failed",
                        f"only {alive} of {self.expected_agents} agents registered "
                        f"within {self.config.register_timeout_s} s; see agent*.log in {self.config.run_dir}",
                    )
                    break
                if self.membership is None:
                    self._check_launched_alive()
                self._cond.wait(0.2)
            return self.outcome or "failed"

    def close(self) -> None:
        """Tell agents to shut down, stop serving, stop launched agents. Never raises; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cond:
            for record in self.agents.values():
                if record.alive:
                    self._send(record, {"type": "shutdown"})
        deadline = time.monotonic() + 5
        for agent in self.launched:
            agent.process.poll()
            while agent.process.returncode is None and time.monotonic() < deadline:
                time.sleep(0.05)
                agent.process.poll()
            agent.stop()
        self.server.close()
        with self._cond:
            for record in self.agents.values():
                record.channel.close()

    # ----------------------------------------------------------------- connections
    def _handle(self, channel: Channel, role: str) -> None:
        if role == "submit":
            from oobleck.runtime.control.submission import serve_submission

            serve_submission(self, channel)
            return
        if role != "agent":
            raise ProtocolError(f"unknown role {role!r}")
        record = self._register(channel, channel.recv(HANDSHAKE_TIMEOUT_S))
        if record is None:
            return
        try:
            while record.alive:
                try:
                    message = channel.recv(self.config.heartbeat_interval_s)
                except TimeoutError:
                    continue
                self._on_message(record, message)
        except (ConnectionClosedError, ProtocolError, OSError) as exc:
            self._fail(record.node, f"connection lost ({exc.__class__.__name__}: {exc})")
            if isinstance(exc, ProtocolError):
                raise

    def _register(self, channel: Channel, message: dict[str, Any]) -> AgentRecord | None:
        if message.get("type") != "register":
            raise ProtocolError(f"expected 'register', got {message.get('type')!r}")
        index, slots = message.get("index"), int(message.get("slots", 1))
        with self._cond:
            taken = {n for n, r in self.agents.items() if r.alive}
            if isinstance(index, int) and index >= 0 and index not in taken:
                node = index
            else:
                node = max([self._next_node - 1, *self.agents]) + 1 if self.agents else self._next_node
            self._next_node = max(self._next_node, node + 1)
            now = time.monotonic()
            record = AgentRecord(
                node,
                str(message.get("host", "?")),
                int(message.get("pid", 0)),
                slots,
                channel,
                now,
                time.time(),
            )
            expected_slots = next((r.slots for r in self.agents.values() if r.alive), slots)
            if slots != expected_slots:
                channel.send(
                    {"type": "error", "message": f"slots={slots} but the job's nodes have {expected_slots}"}
                )
                logger.warning(
                    "refused agent on %s: slots=%d, job has %d", record.host, slots, expected_slots
                )
                return None
            self.agents[node] = record
            self._send(
                record,
                {
                    "type": "welcome",
                    "node": node,
                    "heartbeat_interval_s": self.config.heartbeat_interval_s,
                    "store": {"host": self.address, "port": self.store.port},
                    "run_dir": str(self.config.run_dir),
                },
            )
            logger.info(
                "agent registered: node %d on %s (pid %d, %d slots)", node, record.host, record.pid, slots
            )
            self._write_agents()
            if self.job is not None and self.outcome is None:
                self._send(record, self.job.to_message())
            return record

    def _on_message(self, record: AgentRecord, message: dict[str, Any]) -> None:
        kind = message["type"]
        with self._cond:
            record.last_seen, record.last_seen_wall = time.monotonic(), time.time()
        if kind == "heartbeat":
            return
        if kind == "workers":
            with self._cond:
                record.worker_pids = [int(p) for p in message.get("pids", [])]
                self._write_agents()
        elif kind == "worker_exit":
            code = int(message.get("code", -1))
            if message.get("error"):
                self._record_error(record.node, message["error"])
            if code != 0:
                self._fail(record.node, f"worker {message.get('local_rank')} exited with code {code}")
        elif kind == "ready":
            with self._cond:
                record.ready = True
                if self.outcome is not None or self.job is None:
                    return
                if self.membership is None:
                    self._maybe_start()
                elif any(self.agents[n].done for n in self.membership.members):
                    logger.info("node %d is ready but the job is finishing; not admitted", record.node)
                elif record.node not in self.membership.members:
                    self._new_generation(joined=(record.node,), reason=f"node {record.node} joined")
        elif kind == "done":
            with self._cond:
                record.done = True
                members = self.membership.members if self.membership else ()
                if members and all(self.agents[n].done for n in members if self.agents[n].alive):
                    self._finish("completed", "every worker finished")
        elif kind == "regroup":
            with self._cond:
                if (
                    self.membership is not None
                    and int(message.get("generation", -1)) == self.membership.generation
                ):
                    self._new_generation(reason=f"regroup requested by node {record.node}")
        else:
            raise ProtocolError(f"unexpected message type {kind!r} from an agent")

    # ----------------------------------------------------------------- membership
    def _maybe_start(self) -> None:
        alive = sorted(n for n, r in self.agents.items() if r.alive and r.ready)
        if self.job is None or self.membership is not None or len(alive) < self.expected_agents:
            return
        slots = self.agents[alive[0]].slots
        self.membership = Membership(
            0, tuple(alive), joined=tuple(alive), detected_at=time.time(), reason="job start", slots=slots
        )
        logger.info("job starting on nodes %s", alive)
        self._broadcast()

    def _new_generation(
        self,
        *,
        lost: tuple[int, ...] = (),
        joined: tuple[int, ...] = (),
        reason: str,
        failure_at: float = 0.0,
    ) -> None:
        assert self.membership is not None
        members = tuple(sorted((set(self.membership.members) - set(lost)) | set(joined)))
        self.membership = Membership(
            self.membership.generation + 1,
            members,
            lost,
            joined,
            time.time(),
            failure_at,
            reason,
            self.membership.slots,
        )
        logger.warning("generation %d: %s; members %s", self.membership.generation, reason, list(members))
        if not members:
            self._finish("failed", f"no nodes left ({reason})")
            return
        self._broadcast()

    def _broadcast(self) -> None:
        assert self.membership is not None
        message = self.membership.to_message()
        append_jsonl(
            self.config.run_dir / "metrics.jsonl",
            {"event": "membership", "source": "master", "t": self.membership.detected_at, **message},
        )
        for node in self.membership.members:
            self._send(self.agents[node], message)

    def _send(self, record: AgentRecord, message: dict[str, Any]) -> None:
        try:
            record.channel.send(message)
        except (OSError, ProtocolError) as exc:
            # NOTE: the handler thread of this agent sees the broken socket and calls _fail.
            logger.info("send to node %d failed: %s", record.node, exc)
            record.channel.close()

    def _fail(self, node: int, reason: str, *, silent_since: float | None = None) -> None:
        with self._cond:
            record = self.agents.get(node)
            if record is None or not record.alive:
                return
            record.alive = False
            record.channel.close()
            if self.outcome is not None or record.done:
                logger.info("node %d (%s) left: %s", node, record.host, reason)
            else:
                logger.warning("node %d (%s) failed: %s", node, record.host, reason)
            self._write_agents()
            if self.outcome is None and self.membership is not None and node in self.membership.members:
                if record.done:
                    return
                self._new_generation(
                    lost=(node,), reason=f"node {node} lost: {reason}", failure_at=silent_since or time.time()
                )
            self._cond.notify_all()

    def _watch_heartbeats(self) -> None:
        limit = self.config.heartbeat_interval_s * self.config.missed_heartbeats
        while not self._closed.wait(self.config.heartbeat_interval_s / 4):
            now = time.monotonic()
            with self._cond:
                late = [
                    (r.node, r.last_seen_wall)
                    for r in self.agents.values()
                    if r.alive and now - r.last_seen > limit
                ]
            for node, since in late:
                self._fail(node, f"no heartbeat for {limit:.1f} s", silent_since=since)

    def _check_launched_alive(self) -> None:
        for agent in self.launched:
            code = agent.process.poll()
            if code is not None and code != 0 and self.membership is None:
                self._finish(
                    "failed",
                    f"agent {agent.index} on {agent.entry.host} exited with code {code} "
                    f"before the job started; see {agent.log_path}",
                )

    def _record_error(self, node: int, error: dict[str, Any]) -> None:
        with self._cond:
            stamp = float(error.get("timestamp", time.time()))
            if self.first_error is None or stamp < float(self.first_error.get("timestamp", stamp)):
                self.first_error = {"node": node, **error}

    def _finish(self, outcome: str, reason: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        log = logger.info if outcome == "completed" else logger.error
        log("job %s: %s", outcome, reason)
        if self.first_error is not None:
            logger.error(
                "first worker error (node %s): %s",
                self.first_error.get("node"),
                self.first_error.get("message"),
            )
        append_jsonl(
            self.config.run_dir / "metrics.jsonl",
            {"event": "job_" + outcome, "source": "master", "t": time.time(), "reason": reason},
        )
        for record in self.agents.values():
            if record.alive:
                self._send(record, {"type": "shutdown"})
        self._cond.notify_all()

    def _write_agents(self) -> None:
        launched = {a.index: a for a in self.launched}
        rows = [
            {
                "node": r.node,
                "host": r.host,
                "agent_pid": r.pid,
                "worker_pids": r.worker_pids,
                "alive": r.alive,
                "launcher_pid": launched[r.node].pid if r.node in launched else None,
            }
            for r in sorted(self.agents.values(), key=lambda r: r.node)
        ]
        write_json_atomic(self.config.run_dir / "agents.json", rows)
