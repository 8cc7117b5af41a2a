"""The master's I/O shell: connections, the monitor, run-dir files around the pure membership machine.

Assumptions:
- Every decision is :class:`~oobleck.runtime.control.membership_machine.MembershipMachine`'s; this
  module turns reads, ticks and file errors into events and carries out the decisions. Events are
  fed one at a time under one lock; nothing under that lock touches a socket (messages go to each
  connection's :class:`~oobleck.runtime.control.outbox.Outbox`), so a peer that stops reading cannot
  stall the master.
- Failure = TCP disconnect OR ``missed_heartbeats`` silent intervals of *master-observed* time OR a
  worker exiting non-zero under a live agent. A lost node is told so and its connection closed
  (fencing: a hung node that wakes up finds itself cut off and exits).
- A run-dir write that fails (ENOSPC, unwritable file) fails the job once with its cause; it is
  never blamed on the node whose message triggered it.
- ``resume=True`` restarts on a run dir whose master died: same ports (master.json), same job
  (job.json), and the generation last announced (metrics.jsonl) is adopted as agents re-register.
- The rendezvous store is the authenticated store service (``control/store.py``) on the control
  server's address; workers get only a key derived from the token (set by their agent).
- A daemon runs many jobs, one at a time, each in its own run dir (``jobs/<id>/``) and with its own
  store service: when a job ends the store is replaced by an empty one on a new port (master.json
  rewritten; agents welcomed from then on get it), so no key of an earlier job (gloo pair
  addresses, ``ctl/gen0/...`` records) can be read by the next, and a straggling worker of an
  earlier job can only reach the closed old store. The job message carries
  the store and run dir; agents of an ended job were told to shut down and take no part in the next.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from oobleck.runtime.control import master_files
from oobleck.runtime.control.job_table import JobTable
from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.launchers import LaunchedAgent
from oobleck.runtime.control.master_config import MasterConfig
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_events import (
    AgentsChanged,
    Announce,
    Decision,
    Disconnect,
    Event,
    Evict,
    Finish,
    JobError,
    Reject,
    Resumed,
    Send,
    Submit,
    Tick,
    Welcome,
)
from oobleck.runtime.control.membership_machine import MembershipMachine
from oobleck.runtime.control.messages import MessageError, parse_agent_message, parse_register
from oobleck.runtime.control.outbox import Outbox
from oobleck.runtime.control.progress import ProgressTail
from oobleck.runtime.control.progress_display import TerminalBar
from oobleck.runtime.control.protocol import (
    HANDSHAKE_TIMEOUT_S,
    Channel,
    ConnectionClosedError,
    ProtocolError,
)
from oobleck.runtime.control.records import append_jsonl, write_json_atomic
from oobleck.runtime.control.server import ControlServer
from oobleck.runtime.control.status_service import STATUS_ROLE, read_view, serve_status
from oobleck.runtime.control.status_view import NodeRow, StatusView
from oobleck.runtime.control.store import start_store_service
from oobleck.runtime.control.tensorboard_log import TensorBoardMirror, check_tensorboard, open_mirror

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
"""How often the master reads the job's metrics for its progress and recovery lines."""

SubmitHandler = Callable[["Master", Channel], None]
"""Serves one ``submit`` connection (``submission.serve_submission``; injected to keep imports one-way)."""


class Master:
    """Runs the control server and the store; feeds the membership machine; carries out decisions."""

    def __init__(
        self,
        config: MasterConfig,
        token: bytes,
        *,
        advertise_host: str | None = None,
        submit_handler: SubmitHandler | None = None,
        resume: bool = False,
    ) -> None:
        """Bind the store and the control server, write master.json, start the monitor.

        Args:
            config: Bind address, run directory, liveness settings.
            token: The job's shared secret (authenticates agents, submitters and store clients).
            advertise_host: Address agents should dial (default: the bind address, or this
                machine's name when binding every interface).
            submit_handler: Serves ``submit`` connections (None refuses them).
            resume: Restart on ``config.run_dir`` of a master that died (ports from master.json).

        Raises:
            ConfigError: ``resume`` and the run dir has no readable master.json.
            OSError: A port cannot be bound or master.json cannot be written.
        """
        self.config, self.token = config, token
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Condition()
        self.machine = MembershipMachine(
            heartbeat_interval_s=config.heartbeat_interval_s, missed_heartbeats=config.missed_heartbeats
        )
        self.first_error: dict[str, Any] | None = None
        self.launched: list[LaunchedAgent] = []
        self._outboxes: dict[int, Outbox] = {}
        self._pending: dict[int, Outbox] = {}
        self._conn_node: dict[int, int] = {}
        self._conn_ids = itertools.count()
        self._disk_failed = False
        self._submit_handler = submit_handler
        self._closed = threading.Event()
        self.job_dir = config.run_dir
        """The current job's run dir: ``config.run_dir`` for a one-shot job, ``jobs/<id>/`` in a daemon."""
        self.jobs = JobTable(config.run_dir)
        self.job_id: str | None = None
        self._job_deadline: float | None = None
        self._job_timeout_s = 0.0
        self._retired: list[LaunchedAgent] = []
        previous = master_files.read_master_info(config.run_dir) if resume else None
        self.store = start_store_service(token, config.host, previous.store_port if previous else 0)
        port = config.port or (previous.port if previous else 0)
        self.server = ControlServer(token, self._handle, host=config.host, port=port)
        self.address = advertise_host or (
            config.host if config.host not in ("0.0.0.0", "::") else os.uname()[1]
        )
        self._write_master_info()
        if resume:
            job, expected = master_files.read_job(config.run_dir)
            adopted = master_files.last_membership(config.run_dir) if job is not None else None
            logger.warning(
                "resuming on %s: job %s, adopting generation %s",
                config.run_dir,
                "running" if job is not None else "none",
                adopted.generation if adopted else None,
            )
            self._feed(Resumed(job, expected, adopted, config.resume_grace_s))
        self._monitor = threading.Thread(target=self._watch, name="master-monitor", daemon=True)
        self._monitor.start()
        self._progress: tuple[ProgressTail, int] | None = None
        self._progress_lock = threading.Lock()
        """Serialises reports of one tail (the progress thread, and a job's end)."""
        self._mirror: TensorBoardMirror | None = None
        """The job's TensorBoard writer (``logging: {tensorboard: true}``), fed by the progress thread."""
        threading.Thread(target=self._report_progress, name="master-progress", daemon=True).start()

    @property
    def outcome(self) -> str | None:
        """``"completed"``/``"failed"`` once the job ended, else None."""
        return self.machine.outcome

    @property
    def membership(self) -> Membership | None:
        """The current generation."""
        return self.machine.membership

    # ----------------------------------------------------------------- job lifecycle
    def submit(
        self, job: JobSpec, expected_agents: int, *, timeout_s: float | None = None, daemon: bool = False
    ) -> str | None:
        """Accept a job; it starts once ``expected_agents`` agents are registered and ready.

        Args:
            job: The validated job.
            expected_agents: Agents to wait for before generation 0.
            timeout_s: Fail the job after this long (None: no limit).
            daemon: Give the job an id and its own run dir ``jobs/<id>/`` (a daemon's submission).

        Returns:
            The job id (daemon), else None.

        Raises:
            RuntimeError: A job is already running.
        """
        check_tensorboard(job.config.logging.tensorboard, job.config_path)
        with self._lock:
            if self.machine.job is not None and self.machine.outcome is None:
                raise RuntimeError(f"job {self.job_id or '(one-shot)'} is still running on this master")
            self._retired += self.launched
            self.launched = []
            self.first_error, self._disk_failed = None, False
            if daemon:
                entry = self.jobs.add(expected_agents, timeout_s or 0.0)
                self.job_id, self.job_dir = entry.job_id, self.config.run_dir / "jobs" / entry.job_id
                self.job_dir.mkdir(parents=True, exist_ok=True)
                self._write(self._write_jobs)
            self._job_timeout_s = timeout_s or 0.0
            self._job_deadline = None if timeout_s is None else time.monotonic() + timeout_s
            store = {"host": self.address, "port": self.store.port}
            message = {
                **job.to_message(),
                "run_dir": str(self.job_dir),
                "store": store,
                "job_id": self.job_id,
            }
            self._write(lambda: master_files.write_job(self.job_dir, message, expected_agents))
            self._progress = (ProgressTail(self.job_dir / "metrics.jsonl"), job.config.steps)
            previous, self._mirror = self._mirror, open_mirror(job.config.logging.tensorboard, self.job_dir)
            if previous is not None:
                previous.close()
            self._feed(
                Submit(
                    message,
                    expected_agents,
                    self.config.register_timeout_s,
                    hardware=job.config.hardware,
                    gpus_per_node=job.config.gpus_per_node,
                )
            )
            return self.job_id

    def cancel(self, job_id: str, reason: str = "cancelled by the user") -> bool:
        """Fail the running job ``job_id`` (its agents are told to shut down).

        Returns:
            Whether ``job_id`` was running.
        """
        with self._lock:
            entry = self.jobs.find(job_id)
            if entry is None or entry.state != "running" or self.machine.outcome is not None:
                return False
            entry.state = "cancelling"
            self._feed(JobError(f"{job_id} {reason}"))
            return True

    def _new_store(self) -> None:
        """Replace the store service with an empty one on a fresh port (a new job's namespace)."""
        try:
            fresh = start_store_service(self.token, self.config.host, 0)
        except OSError as exc:
            logger.error("cannot start a fresh store (%s); the next job shares this one", exc)
            return
        old, self.store = self.store, fresh
        old.close()
        self._write(self._write_master_info)
        logger.info("fresh store for the next job on port %d", self.store.port)

    def _write_master_info(self) -> None:
        info = master_files.MasterInfo(self.address, self.server.port, self.store.port, os.getpid())
        master_files.write_master_info(self.config.run_dir, info)

    def _write_jobs(self) -> None:
        write_json_atomic(self.config.run_dir / "jobs.json", self.jobs.rows())

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the job completes or fails (or ``timeout_s`` passes).

        Returns:
            ``"completed"``, ``"failed"``, or ``"timeout"``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self.machine.outcome is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return "timeout"
                self._lock.wait(0.2)
            return self.machine.outcome

    def close(self) -> None:
        """Tell agents to shut down, stop serving, stop launched agents. Never raises; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            for outbox in self._outboxes.values():
                # NOTE: ``final``: a kept agent (``--keep``) exits instead of waiting for a next job.
                outbox.put({"type": "shutdown", "final": True})
        deadline = time.monotonic() + 5
        for agent in [*self._retired, *self.launched]:
            while agent.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            agent.stop()
        self.server.close()
        with self._lock:
            boxes = [*self._outboxes.values(), *self._pending.values()]
        for outbox in boxes:
            outbox.close()
        self.store.close()
        if self._mirror is not None:
            self._mirror.close()  # NOTE: the rows written after the progress thread's last poll.

    # ----------------------------------------------------------------- events in
    def _feed(self, event: Event) -> None:
        """Step the machine and carry out its decisions (and those of errors they raise), in order."""
        with self._lock:
            queue = [event]
            snapshot = False
            while queue:
                decisions = self.machine.step(queue.pop(0), time.monotonic(), time.time())
                for decision in decisions:
                    if isinstance(decision, AgentsChanged):
                        # NOTE: agents.json is a snapshot of the node table: written once, after
                        # the event's notices are queued, so a loss's notice does not wait for it.
                        snapshot = True
                        continue
                    error = self._apply(decision)
                    if error is not None:
                        queue.append(JobError(error))
                if snapshot and not queue:
                    snapshot = False
                    error = self._apply(AgentsChanged())
                    if error is not None:
                        queue.append(JobError(error))
            self._lock.notify_all()

    def _watch(self) -> None:
        while not self._closed.wait(self.config.heartbeat_interval_s / 4):
            self._feed(Tick())
            deadline = self._job_deadline
            if deadline is not None and self.machine.outcome is None and time.monotonic() >= deadline:
                self._feed(JobError(f"timed out after {self._job_timeout_s:.0f} s (submit --timeout-s)"))
            if self.machine.membership is None and self.machine.outcome is None:
                for agent in self.launched:
                    code = agent.process.poll()
                    if code not in (None, 0):
                        self._feed(
                            JobError(
                                f"agent {agent.index} on {agent.entry.host} exited with code {code} "
                                f"before the job started; see {agent.log_path}"
                            )
                        )

    def _report_progress(self) -> None:
        """Log a progress line every ~5% of the steps and one line per recovery (own thread: file reads);
        on a terminal stdout, also redraw a progress bar every :data:`PROGRESS_EVERY_S`."""
        bar = TerminalBar.open(sys.stdout)
        while not self._closed.wait(PROGRESS_EVERY_S):
            current = self._progress
            if current is None:
                continue
            tail, total_steps = current
            self._report_lines()
            if bar is not None:
                bar.show(tail.summary(total_steps))
            mirror = self._mirror
            if mirror is not None:
                mirror.poll()
        if bar is not None:
            bar.close()

    def _report_lines(self) -> None:
        """Log the progress and recovery lines the job's newest metrics rows call for."""
        with self._progress_lock:
            current = self._progress
            if current is None:
                return
            tail, total_steps = current
            for line in tail.report(total_steps, max(1, total_steps // 20)):
                logger.info("%s%s", f"{self.job_id}: " if self.job_id else "", line)

    def status_view(self) -> StatusView:
        """What ``oobleck status --master`` shows: this master's node table and the job dir's files.

        Called on a status connection's thread; copies the table under the lock, reads files after.
        """
        with self._lock:
            nodes = [
                NodeRow(s.node, s.host, s.alive, s.pid)
                for s in sorted(self.machine.nodes.values(), key=lambda s: s.node)
            ]
            # NOTE: getattr: the server accepts before __init__ has set ``_progress``.
            progress = getattr(self, "_progress", None)
            job_dir, total_steps = self.job_dir, progress[1] if progress is not None else 0
            state = "idle (no job submitted yet)" if self.machine.job is None else None
        return read_view(job_dir, total_steps, nodes, state)

    def _handle(self, channel: Channel, role: str) -> None:
        if role == STATUS_ROLE:
            serve_status(channel, self.status_view)
            return
        if role == "submit" and self._submit_handler is not None:
            self._submit_handler(self, channel)
            return
        if role != "agent":
            raise ProtocolError(f"unknown role {role!r}")
        conn = next(self._conn_ids)
        outbox = Outbox(channel, channel.peer)
        with self._lock:
            self._pending[conn] = outbox
        node = None
        try:
            node = self._register(conn, channel)
            if node is not None:
                self._serve_agent(node, channel, outbox)
        finally:
            with self._lock:
                self._pending.pop(conn, None)
            outbox.close()
            outbox.wait_closed(2.0)  # NOTE: a rejection or eviction notice leaves before the close.

    def _register(self, conn: int, channel: Channel) -> int | None:
        try:
            event = parse_register(channel.recv(HANDSHAKE_TIMEOUT_S), conn)
        except (MessageError, TimeoutError) as exc:
            logger.warning("control: rejected agent from %s: %s", channel.peer, exc)
            with self._lock:
                self._pending[conn].put({"type": "error", "message": str(exc)})
            return None
        self._feed(event)
        with self._lock:
            return self._conn_node.pop(conn, None)

    def _serve_agent(self, node: int, channel: Channel, outbox: Outbox) -> None:
        try:
            while self._alive(node, outbox):
                try:
                    message = channel.recv(self.config.heartbeat_interval_s)
                except TimeoutError:
                    continue
                try:
                    event = parse_agent_message(node, message)
                except MessageError as exc:
                    logger.warning("node %d: rejected message: %s", node, exc)
                    outbox.put({"type": "rejected", "message": str(exc)})
                    continue
                if message["type"] == "worker_exit" and isinstance(message.get("error"), dict):
                    self._record_error(node, message["error"])
                self._feed(event)
        except (ConnectionClosedError, ProtocolError, OSError) as exc:
            if self._alive(node, outbox):  # NOTE: not when a kept agent already re-registered anew.
                self._feed(Disconnect(node, f"{exc.__class__.__name__}: {exc}"))
            if isinstance(exc, ProtocolError):
                raise

    def _alive(self, node: int, outbox: Outbox) -> bool:
        """Whether ``node`` is alive and still served over ``outbox`` (not a later registration's)."""
        with self._lock:
            state = self.machine.nodes.get(node)
            return state is not None and state.alive and self._outboxes.get(node) is outbox

    def _record_error(self, node: int, error: dict[str, Any]) -> None:
        with self._lock:
            try:
                stamp = float(error.get("timestamp", time.time()))
            except (TypeError, ValueError):
                stamp = time.time()
            if self.first_error is None or stamp < float(self.first_error.get("timestamp", stamp)):
                self.first_error = {"node": node, **error, "timestamp": stamp}

    # ----------------------------------------------------------------- decisions out
    def _apply(self, decision: Decision) -> str | None:
        """Carry out one decision (queue sends, write files); returns a job error's cause, if any."""
        run_dir = self.job_dir
        match decision:
            case Welcome(conn=conn, node=node):
                outbox = self._pending.pop(conn)
                self._outboxes[node], self._conn_node[conn] = outbox, node
                state = self.machine.nodes[node]
                logger.info(
                    "agent registered: node %d on %s (pid %d, %d slots)",
                    node,
                    state.host,
                    state.pid,
                    state.slots,
                )
                outbox.put(
                    {
                        "type": "welcome",
                        "node": node,
                        "heartbeat_interval_s": self.config.heartbeat_interval_s,
                        "store": {"host": self.address, "port": self.store.port},
                        "run_dir": str(self.job_dir),
                    }
                )
            case Reject(conn=conn, reason=reason):
                logger.warning("refused agent: %s", reason)
                self._pending[conn].put({"type": "error", "message": reason})
            case Send(node=node, message=message) if node in self._outboxes:
                self._outboxes[node].put(message)
            case Announce(membership=m):
                level = logging.INFO if m.generation == 0 else logging.WARNING
                logger.log(level, "generation %d: %s; members %s", m.generation, m.reason, list(m.members))
                message = m.to_message()
                for node in m.members:
                    if node in self._outboxes:  # NOTE: a resumed master adopts members not yet back.
                        self._outboxes[node].put(message)
                # NOTE: the record after the notices: a survivor's recovery does not wait for a write.
                record = {"event": "membership", "source": "master", "t": m.detected_at, **message}
                return self._write(lambda: append_jsonl(run_dir / "metrics.jsonl", record))
            case Evict(node=node, cause=cause, reason=reason):
                log = logger.info if self.machine.outcome is not None else logger.warning
                log("node %d lost (%s): %s", node, cause.value, reason)
                fenced = self._outboxes.pop(node, None)
                if fenced is not None:
                    fenced.put({"type": "evicted", "reason": reason})
                    fenced.close()
            case Finish(outcome=outcome, reason=reason):
                # NOTE: the last steps' lines now, not at the next poll: a next job replaces the tail.
                self._report_lines()
                (logger.info if outcome == "completed" else logger.error)("job %s: %s", outcome, reason)
                if self.first_error is not None:
                    logger.error(
                        "first worker error (node %s): %s",
                        self.first_error.get("node"),
                        self.first_error.get("message"),
                    )
                record = {"event": "job_" + outcome, "source": "master", "t": time.time(), "reason": reason}
                self._write(lambda: append_jsonl(run_dir / "metrics.jsonl", record))
                self._job_deadline = None
                if self.job_id is not None:
                    self.jobs.end(self.job_id, outcome, reason)
                    self._write(self._write_jobs)
                    # NOTE: at the end, not at the next submit: an agent started by hand between two
                    # jobs is welcomed with the store its job will use.
                    self._new_store()
            case AgentsChanged():
                return self._write(self._write_agents)
        return None

    def _write(self, write: Callable[[], None]) -> str | None:
        """Run one run-dir write; the first failure is a job error (one log line), later ones are skipped."""
        if self._disk_failed:
            return None
        try:
            write()
        except OSError as exc:
            self._disk_failed = True
            # NOTE: logged once, by the job's failure line that carries this cause; no node is to blame.
            return f"cannot write the run dir {self.job_dir}: {exc}"
        return None

    def _write_agents(self) -> None:
        launched = {a.index: a.pid for a in self.launched}
        master_files.write_agents(self.job_dir, self.machine.nodes.values(), launched)
