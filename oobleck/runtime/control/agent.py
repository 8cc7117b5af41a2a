"""The agent: one per node; registers with the master, heartbeats, runs and watches the workers.

Assumptions:
- The node is the failure unit: a worker that exits non-zero, or an eviction notice from the master,
  ends the whole agent (its other workers are killed), and the master turns that into a membership
  change of one node, however many slots (workers, devices) it has.
- One worker per slot, numbered like torchrun: ``LOCAL_RANK`` 0..slots-1, ``LOCAL_WORLD_SIZE`` =
  slots, every GPU visible (``CUDA_VISIBLE_DEVICES`` inherited), device ``cuda:LOCAL_RANK``.
- Losing the master does not: steps need no master, so the workers keep training while the agent
  reconnects with backoff (up to ``reconnect_timeout_s``) and re-registers under its node id with the
  generation its workers run; what workers ask meanwhile (a regroup) is sent once it is back.
- Workers run in the agent's process group, so killing the group kills the node.
- Everything heavy (torch, via the store module) is imported before the agent registers: loading
  torch's libraries holds the GIL for seconds, which would silence the heartbeat thread mid-job.
- A kept agent (``keep``) serves one job after another: told to shut down at a job's end, it stops
  its workers, closes that connection and registers again under its node id as a *fresh* member
  (no resume: the master never counts an ended job's workers towards the next job). Only the end
  of a job keeps it: a failed worker, an eviction, a refusal or the master closing for good
  (``final`` shutdown) still end the agent, and so does a master that is gone between two jobs.
- Agent and workers talk over an inherited socketpair (``OOBLECK_CONTROL=fd:N``) using the same
  MAC'd frames as the network, keyed by a per-worker random key; the job token never reaches a worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError, OobleckError
from oobleck.runtime.control.nccl_env import nccl_environment
from oobleck.runtime.control.protocol import Channel, ConnectionClosedError, ProtocolError, connect
from oobleck.runtime.control.store import STORE_KEY_ENV, store_key
from oobleck.runtime.control.worker_errors import read_error_file
from oobleck.runtime.run_log import ERROR_FILE_ENV

logger = logging.getLogger(__name__)

CONTROL_ENV = "OOBLECK_CONTROL"
"""``fd:<n>``: the worker's end of its socketpair to the agent."""
CONTROL_KEY_ENV = "OOBLECK_CONTROL_KEY"
"""Hex MAC key of that socketpair."""
NODE_ENV = "OOBLECK_NODE"
"""The worker's stable node id."""

WORKER_POLL_S = 1.0
"""Backstop of the worker watch: a thread per worker blocks in ``wait()`` and wakes the watch the
moment its worker exits, so a worker's exit reaches the master at once, not at the next poll."""


@dataclass(kw_only=True, slots=True)
class AgentConfig:
    """How to reach the master and what to run."""

    master_host: str
    """Master address."""
    master_port: int
    """Master control port."""
    index: int | None = None
    """Requested node id (the hostfile index); None lets the master choose (a hand-started agent)."""
    slots: int = 1
    """Workers to start (one per device)."""
    run_dir: Path | None = None
    """Overrides the master's run directory (a node without the shared file system)."""
    worker_module: str = "oobleck.runtime.worker"
    """Module run as ``python -m`` for each worker."""
    connect_timeout_s: float = 60.0
    """Keep retrying the master this long (agents may start before it)."""
    reconnect_timeout_s: float = 120.0
    """After losing the master, keep retrying this long (a master resumed with ``--resume``) before
    stopping the workers; matches the workers' 120 s barrier bound."""
    keep: bool = False
    """Stay attached after a job ends and serve the master's next job (a daemon's)."""


@dataclass(slots=True)
class _Worker:
    local_rank: int
    process: subprocess.Popen[bytes]
    channel: Channel
    error_file: Path


class Agent:
    """Drives one node for the life of a job (or of many, ``keep``); :meth:`run` returns the exit status."""

    def __init__(self, config: AgentConfig, token: bytes) -> None:
        """Args:
        config: Master address and worker settings.
        token: The job's shared secret.
        """
        self.config = config
        self._token = token
        self.node = -1
        self.workers: list[_Worker] = []
        self.job: dict[str, Any] | None = None
        self.membership: dict[str, Any] | None = None
        self.store: dict[str, Any] = {}
        self.run_dir = config.run_dir
        self._exit_code: int | None = None
        self._ready: set[int] = set()
        self._stop = threading.Event()
        self._worker_exited = threading.Event()
        """Set by a waiter thread when its worker exits, so the watch looks at once (one per job)."""
        self._channel: Channel | None = None
        self._send_lock = threading.Lock()
        self._backlog: list[dict[str, Any]] = []
        self._all_done = False
        self._final = False
        """The master closed for good (or the job ended and the agent is not kept)."""
        self.jobs_served = 0
        """Job messages that started workers on this agent (more than one only when kept)."""

    def _connect(self, timeout_s: float) -> Channel:
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            try:
                return connect(self.config.master_host, self.config.master_port, self._token, "agent")
            except (ConnectionRefusedError, TimeoutError, socket.gaierror, ProtocolError, ConnectionError):
                if time.monotonic() >= deadline or self._exit_code is not None:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _register(self, channel: Channel) -> dict[str, Any]:
        """Send ``register`` (with the running generation after a master loss); return the reply."""
        message: dict[str, Any] = {
            "type": "register",
            "index": self.config.index if self.node < 0 else self.node,
            "slots": self.config.slots,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if self.node >= 0 and self.membership is not None:
            message["resume"] = {"membership": self.membership, "done": self._all_done}
        channel.send(message)
        return channel.recv(10.0)

    def run(self) -> int:
        """Register, then serve until shutdown (0), a local failure or eviction (1), or bad input (2).

        A kept agent (``config.keep``) registers again after each job's shutdown and serves the next.

        Returns:
            The exit status for the agent process.
        """
        code = self._serve_one_job(self.config.connect_timeout_s)
        while self.config.keep and code == 0 and not self._final:
            self._reset_for_next_job()
            logger.info("[node %d] job over; staying attached for the next job (--keep)", self.node)
            try:
                code = self._serve_one_job(self.config.connect_timeout_s)
            except (OSError, ProtocolError, ConnectionError, TimeoutError) as exc:
                logger.info("[node %d] the master is gone between jobs (%s); exiting", self.node, exc)
                return 0
        return code

    def _reset_for_next_job(self) -> None:
        """Forget the ended job's workers, readiness, generation and store (the next job brings its own)."""
        self.workers, self._ready, self.membership, self._all_done = [], set(), None, False
        self.job, self._exit_code, self._backlog = None, None, []
        self._stop, self._worker_exited = threading.Event(), threading.Event()

    def _serve_one_job(self, connect_timeout_s: float) -> int:
        """Connect, register and serve one job's life (a fresh registration, keeping a known node id)."""
        channel = self._connect(connect_timeout_s)
        welcome = self._register(channel)
        if welcome["type"] != "welcome":
            logger.error("master refused this agent: %s", welcome.get("message", welcome))
            channel.close()
            return 2
        self.node, self.store = int(welcome["node"]), dict(welcome["store"])
        self.run_dir = self.config.run_dir or Path(welcome["run_dir"])
        interval = float(welcome["heartbeat_interval_s"])
        with self._send_lock:
            self._channel = channel
        logger.info(
            "[node %d] registered with %s:%d", self.node, self.config.master_host, self.config.master_port
        )
        stop = self._stop
        threading.Thread(target=self._heartbeat, args=(interval, stop), name="heartbeat", daemon=True).start()
        threading.Thread(
            target=self._watch_workers, args=(stop, self._worker_exited), name="worker-watch", daemon=True
        ).start()
        try:
            while self._exit_code is None:
                try:
                    self._serve(channel, interval)
                except (ConnectionClosedError, ProtocolError, OSError) as exc:
                    if self._exit_code is not None:
                        break
                    with self._send_lock:
                        self._channel = None
                    channel.close()
                    logger.warning(
                        "[node %d] lost the master (%s); workers keep training, reconnecting", self.node, exc
                    )
                    reconnected = self._reconnect()
                    if reconnected is None:
                        break
                    channel = reconnected
        finally:
            stop.set()
            self.kill_workers()
            with self._send_lock:
                self._channel = None
            channel.close()
        return 1 if self._exit_code is None else self._exit_code

    def _serve(self, channel: Channel, interval: float) -> None:
        while self._exit_code is None:
            try:
                message = channel.recv(interval)
            except TimeoutError:
                continue
            self._on_message(message)

    def _reconnect(self) -> Channel | None:
        """Re-register with a resumed master; None when it did not come back or refused us."""
        try:
            channel = self._connect(self.config.reconnect_timeout_s)
            reply = self._register(channel)
        except (OSError, ProtocolError, ConnectionError, TimeoutError) as exc:
            if self._exit_code is None:
                logger.error("[node %d] the master did not come back (%s); stopping workers", self.node, exc)
                self._exit_code = 0 if self._all_done else 1
            return None
        if reply["type"] != "welcome" or int(reply.get("node", -1)) != self.node:
            logger.error(
                "[node %d] the resumed master refused this node: %s", self.node, reply.get("message")
            )
            self._exit_code = 1
            channel.close()
            return None
        logger.warning("[node %d] re-registered with the resumed master", self.node)
        with self._send_lock:
            self._channel = channel
            backlog, self._backlog = self._backlog, []
        self._send({"type": "workers", "pids": [w.process.pid for w in self.workers]})
        if self.workers and len(self._ready) == self.config.slots:
            self._send({"type": "ready"})
        for message in backlog:
            self._send(message)
        return channel

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "job":
            if not self.workers:
                # NOTE: a kept agent's next job: its own store, run dir and generations.
                self.job, self._ready, self.membership, self._all_done = message, set(), None, False
                self.store = dict(message.get("store", self.store))
                if self.config.run_dir is None and isinstance(message.get("run_dir"), str):
                    self.run_dir = Path(message["run_dir"])
                self.jobs_served += 1
                self._start_workers()
            else:
                self.job = message
        elif kind == "membership":
            self.membership = message
            for worker in self.workers:
                with contextlib.suppress(OSError, ProtocolError):
                    worker.channel.send(message)
        elif kind == "shutdown":
            logger.info("[node %d] shutdown requested", self.node)
            self._final = self._final or bool(message.get("final", False))
            self._exit_code = 0
        elif kind == "evicted":
            logger.error("[node %d] the master removed this node: %s", self.node, message.get("reason"))
            self._exit_code = 1
        elif kind == "error":
            logger.error("[node %d] master: %s", self.node, message.get("message"))
            self._exit_code = 2
        elif kind == "rejected":
            logger.error("[node %d] the master rejected a message: %s", self.node, message.get("message"))

    def _heartbeat(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            self._send({"type": "heartbeat", "t": time.time()}, keep=False)

    def _config_path(self) -> str:
        assert self.job is not None and self.run_dir is not None
        path = Path(self.job["config_path"])
        if path.is_file() and path.read_text(encoding="utf-8") == self.job["config_text"]:
            return str(path)
        local = self.run_dir / f"job.node{self.node}.yaml"
        local.write_text(self.job["config_text"], encoding="utf-8")
        return str(local)

    def _start_workers(self) -> None:
        assert self.run_dir is not None and self.job is not None
        errors = self.run_dir / "errors"
        errors.mkdir(parents=True, exist_ok=True)
        config_path = self._config_path()
        try:
            entrypoint = job_entrypoint(self.job["config_text"], self.job["config_path"])
        except OobleckError as error:
            # NOTE: the master checked the file before starting agents; here it is missing on this node.
            logger.error("[node %d] %s", self.node, error)
            self._send({"type": "job_error", "message": str(error)})
            return
        for local_rank in range(self.config.slots):
            ours, theirs = socket.socketpair()
            key = secrets.token_bytes(32)
            error_file = errors / f"node{self.node}_local{local_rank}.json"
            error_file.unlink(missing_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("OOBLECK_TOKEN")}
            env.update(
                {
                    CONTROL_ENV: f"fd:{theirs.fileno()}",
                    CONTROL_KEY_ENV: key.hex(),
                    NODE_ENV: str(self.node),
                    "LOCAL_RANK": str(local_rank),
                    "LOCAL_WORLD_SIZE": str(self.config.slots),
                    "MASTER_ADDR": str(self.store["host"]),
                    "MASTER_PORT": str(self.store["port"]),
                    ERROR_FILE_ENV: str(error_file),
                    STORE_KEY_ENV: store_key(self._token).hex(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                }
            )
            # NOTE: torchrun's convention: CUDA_VISIBLE_DEVICES is left as inherited (every GPU of
            # the node visible) and a worker uses cuda:LOCAL_RANK.
            env.update(nccl_environment(env))
            argv = worker_argv(
                self.config.worker_module, entrypoint, config_path=config_path, run_dir=str(self.run_dir)
            )
            process = subprocess.Popen(argv, env=env, pass_fds=(theirs.fileno(),))
            theirs.close()
            channel = Channel(ours, key, is_server=True, peer=f"worker{local_rank}")
            worker = _Worker(local_rank, process, channel, error_file)
            self.workers.append(worker)
            threading.Thread(target=self._relay_worker, args=(worker, self._stop), daemon=True).start()
            threading.Thread(
                target=self._await_exit, args=(process, self._worker_exited), daemon=True
            ).start()
        self._send({"type": "workers", "pids": [w.process.pid for w in self.workers]})
        logger.info("[node %d] started workers %s", self.node, [w.process.pid for w in self.workers])

    def _relay_worker(self, worker: _Worker, stop: threading.Event) -> None:
        """Forward requests a worker makes of the master (``regroup``, ``job_error``, ``ready``)."""
        while not stop.is_set():
            try:
                message = worker.channel.recv(1.0)
            except TimeoutError:
                continue
            except (ConnectionError, OSError):
                return
            if message["type"] == "regroup":
                missing = message.get("missing")
                self._send(
                    {
                        "type": "regroup",
                        "generation": message.get("generation"),
                        "missing": missing if isinstance(missing, list) else [],
                    }
                )
            elif message["type"] == "job_error" and isinstance(message.get("message"), str):
                self._send({"type": "job_error", "message": message["message"]})
            elif message["type"] == "ready":
                self._ready.add(worker.local_rank)
                if len(self._ready) == self.config.slots:
                    self._send({"type": "ready"})
                if self.membership is not None:
                    with contextlib.suppress(OSError, ProtocolError):
                        worker.channel.send(self.membership)

    def _send(self, message: dict[str, Any], *, keep: bool = True) -> None:
        """Send to the master; while it is away, keep the message for the resumed one (``keep``)."""
        with self._send_lock:
            if self._channel is not None:
                try:
                    self._channel.send(message)
                    return
                except (OSError, ProtocolError):
                    pass  # NOTE: the main thread sees the broken connection and reconnects.
            if keep:
                self._backlog.append(message)

    @staticmethod
    def _await_exit(process: subprocess.Popen[bytes], exited: threading.Event) -> None:
        """Block until ``process`` exits (it is reaped here), then wake the worker watch."""
        with contextlib.suppress(OSError):
            process.wait()
        exited.set()

    def _watch_workers(self, stop: threading.Event, exited: threading.Event) -> None:
        """Report each worker's exit to the master as it happens; a non-zero one ends the node."""
        finished: set[int] = set()
        while not stop.is_set():
            # NOTE: woken by a waiter thread the moment a worker exits; the timeout is a backstop.
            exited.wait(WORKER_POLL_S)
            exited.clear()
            if stop.is_set():
                return
            for worker in list(self.workers):
                code = worker.process.poll()
                if code is None or worker.local_rank in finished:
                    continue
                finished.add(worker.local_rank)
                error = read_error_file(worker.error_file, code)
                self._send(
                    {"type": "worker_exit", "local_rank": worker.local_rank, "code": code, "error": error}
                )
                if code != 0:
                    logger.error(
                        "[node %d] worker %d exited with %d; the node leaves the job",
                        self.node,
                        worker.local_rank,
                        code,
                    )
                    self._exit_code = 1
                    with self._send_lock:
                        if self._channel is not None:
                            self._channel.close()
                    return
            if self.workers and len(finished) == len(self.workers):
                self._all_done = True
                self._send({"type": "done"})
                return

    def kill_workers(self) -> None:
        """SIGKILL every live worker and reap it; never raises, idempotent."""
        for worker in self.workers:
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(5)
            worker.channel.close()


def job_entrypoint(config_text: str, config_path: str) -> str | None:
    """The job's ``entrypoint`` script (custom models), resolved against the job file's folder.

    Args:
        config_text: The job YAML as the master sent it.
        config_path: The job file's path on the master (relative entrypoints are relative to it).

    Returns:
        The script's path, or None for jobs run by ``oobleck.runtime.worker``.

    Raises:
        ConfigError: The job names an entrypoint that is not a file here.
    """
    from oobleck.runtime.config import job_config_from_text

    job = job_config_from_text(config_text, source=config_path, base_dir=Path(config_path).parent)
    if job.entrypoint is None:
        return None
    if not Path(job.entrypoint).is_file():
        raise ConfigError(f"{config_path}: entrypoint: {job.entrypoint} is not a file on this node")
    return job.entrypoint


def worker_argv(worker_module: str, entrypoint: str | None, *, config_path: str, run_dir: str) -> list[str]:
    """The command line of one worker: the job's entrypoint script, else ``python -m worker_module``.

    Args:
        worker_module: The agent's worker module (``oobleck.runtime.worker``).
        entrypoint: The job's script (``oobleck.api`` users), or None.
        config_path: The job file the worker reads.
        run_dir: The run directory.

    Returns:
        ``[python, <entrypoint> | -m <module>, --config, <job>, --run-dir, <dir>]``.
    """
    program = [entrypoint] if entrypoint is not None else ["-m", worker_module]
    return [sys.executable, *program, "--config", config_path, "--run-dir", run_dir]
