"""The conversations with a daemon master: submit (with progress), jobs, cancel; both sides.

Assumptions:
- The master never imports this module: the CLI hands :func:`serve_submission` to the master as its
  submit handler, so ``job -> master`` and ``submission -> job`` are the only arrows (no circle).
- The config is validated again here (``JobSpec.from_message``), so a tampered submission cannot
  reach the workers.
- Every connection opens with one request: ``submit``, ``jobs`` or ``cancel``. A waiting submitter
  gets a ``progress`` line every :data:`PROGRESS_EVERY_S` (and one per recovery), then ``finished``;
  a submitter that goes away does not cancel its job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from oobleck.errors import ConfigError, OobleckError
from oobleck.runtime.control.hostfile import parse_hostfile_text
from oobleck.runtime.control.job import launch_agents
from oobleck.runtime.control.job_preflight import check_job
from oobleck.runtime.control.job_table import DEFAULT_JOB_TIMEOUT_S
from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.preflight import read_text_file
from oobleck.runtime.control.progress import progress_line, read_records, recovery_line, summarize
from oobleck.runtime.control.protocol import (
    HANDSHAKE_TIMEOUT_S,
    Channel,
    ConnectionClosedError,
    ProtocolError,
    connect,
)

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
"""How often a waiting submitter gets a progress line."""


def serve_submission(master: Master, channel: Channel) -> None:
    """Handle one connection of ``oobleck submit``/``jobs``/``cancel`` on a daemon master.

    Args:
        master: The running master.
        channel: The authenticated client.

    Raises:
        ProtocolError: The first message is none of the requests.
    """
    message = channel.recv(HANDSHAKE_TIMEOUT_S)
    kind = message.get("type")
    if kind == "jobs":
        channel.send({"type": "jobs", "jobs": master.jobs.rows()})
        return
    if kind == "cancel":
        target = str(message.get("job", ""))
        if master.cancel(target):
            channel.send({"type": "cancelled", "job": target})
        else:
            known = [e.job_id for e in master.jobs.entries if e.state == "running"]
            channel.send({"type": "rejected", "message": f"no running job {target!r}; running: {known}"})
        return
    if kind != "submit":
        raise ProtocolError(f"expected 'submit', 'jobs' or 'cancel', got {kind!r}")
    try:
        job = JobSpec.from_message(message)
        hosts = (
            parse_hostfile_text(message["hostfile_text"], str(message.get("hostfile", "hostfile")))
            if message.get("hostfile_text")
            else ()
        )
        check_job(job.config, job.config_path, hosts)
        nodes = message.get("nodes", 0)
        if not isinstance(nodes, int) or isinstance(nodes, bool):
            raise ConfigError(f"submit: nodes={nodes!r} must be an integer")
        timeout_s = message.get("timeout_s", DEFAULT_JOB_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ConfigError(f"submit: timeout_s={timeout_s!r} must be a number > 0")
        expected = len(hosts) or nodes
        if expected < 1:
            raise ConfigError("submit: give --hostfile or --nodes N (agents started by hand)")
        job_id = master.submit(job, expected, timeout_s=float(timeout_s), daemon=True)
    except (OobleckError, RuntimeError) as exc:
        channel.send({"type": "rejected", "message": str(exc)})
        return
    logger.info("%s accepted: %d agents, run dir %s", job_id, expected, master.job_dir)
    if hosts:
        launch_agents(master, hosts)
    job_dir = master.job_dir
    channel.send({"type": "accepted", "job": job_id, "run_dir": str(job_dir)})
    if not message.get("wait"):
        return
    seen_recoveries = 0
    try:
        while master.wait(PROGRESS_EVERY_S) == "timeout":
            records = read_records(job_dir / "metrics.jsonl")
            recoveries = [r for r in records if r.get("event") == "recovery"]
            for row in recoveries[seen_recoveries:]:
                channel.send({"type": "progress", "line": recovery_line(row)})
            seen_recoveries = len(recoveries)
            line = progress_line(summarize(records, job.config.steps))
            channel.send({"type": "progress", "line": line})
        entry = master.jobs.find(str(job_id))
        outcome = entry.state if entry is not None else master.outcome
        channel.send({"type": "finished", "job": job_id, "outcome": outcome, "error": master.first_error})
    except (ConnectionClosedError, OSError):
        logger.info("%s: the waiting submitter left; the job goes on", job_id)


def request(host: str, port: int, token: bytes, message: dict[str, Any]) -> dict[str, Any]:
    """One request and its reply (``jobs``, ``cancel``).

    Raises:
        OSError: The master cannot be reached.
    """
    channel = connect(host, port, token, "submit")
    try:
        channel.send(message)
        return channel.recv(30.0)
    finally:
        channel.close()


def submit_job(
    host: str,
    port: int,
    token: bytes,
    job: JobSpec,
    *,
    hostfile: str | None = None,
    nodes: int = 0,
    wait: bool = False,
    timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Send a job to a daemon master (the client side of :func:`serve_submission`).

    Args:
        host: Master address.
        port: Master control port.
        token: The master's token.
        job: The validated job.
        hostfile: A hostfile whose agents the master should launch (read here, sent as text).
        nodes: Without a hostfile: how many hand-started agents to wait for.
        wait: Keep the connection until the job ends.
        timeout_s: The job fails after this long.
        on_progress: Called with each progress line while waiting.

    Returns:
        The master's last reply: ``accepted``, ``rejected`` or (with ``wait``) ``finished``.

    Raises:
        ConfigError: The hostfile cannot be read.
        OSError: The master cannot be reached.
    """
    message: dict[str, Any] = {
        **job.to_message(),
        "type": "submit",
        "nodes": nodes,
        "wait": wait,
        "timeout_s": timeout_s,
    }
    if hostfile is not None:
        message.update(hostfile=hostfile, hostfile_text=read_text_file(hostfile, "hostfile"))
    channel = connect(host, port, token, "submit")
    try:
        channel.send(message)
        reply = channel.recv(30.0)
        if reply["type"] == "accepted" and wait:
            if on_progress is not None:
                on_progress(f"{reply.get('job')} accepted; run dir {reply.get('run_dir')}")
            started = time.monotonic()
            reply = channel.recv(None)
            while reply["type"] == "progress":
                if on_progress is not None:
                    on_progress(f"[{time.monotonic() - started:6.0f}s] {reply.get('line')}")
                reply = channel.recv(None)
        return reply
    finally:
        channel.close()
