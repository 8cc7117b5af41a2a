"""The submit conversation with a daemon master: the master's side and the ``oobleck submit`` side.

Assumptions:
- The master never imports this module: the CLI hands :func:`serve_submission` to the master as its
  submit handler, so ``job -> master`` and ``submission -> job`` are the only arrows (no circle).
- The config is validated again here (``JobSpec.from_message``), so a tampered submission cannot
  reach the workers.
"""

from __future__ import annotations

import logging
from typing import Any

from oobleck.errors import ConfigError, OobleckError
from oobleck.runtime.control.hostfile import parse_hostfile_text
from oobleck.runtime.control.job import launch_agents
from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.preflight import read_text_file
from oobleck.runtime.control.protocol import HANDSHAKE_TIMEOUT_S, Channel, ProtocolError, connect

logger = logging.getLogger(__name__)


def serve_submission(master: Master, channel: Channel) -> None:
    """Handle one ``submit`` connection on a daemon master: validate, launch, optionally wait.

    Args:
        master: The running master.
        channel: The authenticated submitter.
    """
    message = channel.recv(HANDSHAKE_TIMEOUT_S)
    if message.get("type") != "submit":
        raise ProtocolError(f"expected 'submit', got {message.get('type')!r}")
    try:
        job = JobSpec.from_message(message)
        hosts = (
            parse_hostfile_text(message["hostfile_text"], str(message.get("hostfile", "hostfile")))
            if message.get("hostfile_text")
            else ()
        )
        nodes = message.get("nodes", 0)
        if not isinstance(nodes, int) or isinstance(nodes, bool):
            raise ConfigError(f"submit: nodes={nodes!r} must be an integer")
        expected = len(hosts) or nodes
        if expected < 1:
            raise ConfigError("submit: give --hostfile or --nodes N (agents started by hand)")
        master.submit(job, expected)
    except (OobleckError, RuntimeError) as exc:
        channel.send({"type": "rejected", "message": str(exc)})
        return
    if hosts:
        launch_agents(master, hosts)
    channel.send({"type": "accepted", "run_dir": str(master.config.run_dir)})
    if message.get("wait"):
        outcome = master.wait()
        channel.send({"type": "finished", "outcome": outcome, "error": master.first_error})


def submit_job(
    host: str,
    port: int,
    token: bytes,
    job: JobSpec,
    *,
    hostfile: str | None = None,
    nodes: int = 0,
    wait: bool = False,
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

    Returns:
        The master's last reply: ``accepted``, ``rejected`` or (with ``wait``) ``finished``.

    Raises:
        ConfigError: The hostfile cannot be read.
        OSError: The master cannot be reached.
    """
    message: dict[str, Any] = {**job.to_message(), "type": "submit", "nodes": nodes, "wait": wait}
    if hostfile is not None:
        message.update(hostfile=hostfile, hostfile_text=read_text_file(hostfile, "hostfile"))
    channel = connect(host, port, token, "submit")
    try:
        channel.send(message)
        reply = channel.recv(30.0)
        if reply["type"] == "accepted" and wait:
            reply = channel.recv(None)
        return reply
    finally:
        channel.close()
