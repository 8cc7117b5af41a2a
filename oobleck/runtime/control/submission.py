"""Jobs as the control plane carries them, and the submit conversation with a daemon master.

Assumptions:
- A job travels as its YAML text plus the path it was read from: agents on a shared file system
  use the path (relative data paths keep working); others write the text into the run directory.
- The config is validated by the submitter *and* the master, so a typo is reported where it was
  typed and a tampered submission cannot reach the workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from oobleck.errors import ConfigError, OobleckError
from oobleck.runtime.config import JobConfig, job_config_from_dict, load_job_config
from oobleck.runtime.control.protocol import HANDSHAKE_TIMEOUT_S, Channel, ProtocolError

if TYPE_CHECKING:
    from oobleck.runtime.control.master import Master

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job: where its YAML came from, its text, and the parsed config."""

    config_path: str
    config_text: str
    config: JobConfig

    @classmethod
    def from_path(cls, path: str | Path) -> JobSpec:
        """Read and validate a job YAML file.

        Raises:
            ConfigError: The file is missing or invalid (the message names file and key).
        """
        file = Path(path).resolve()
        config = load_job_config(file)
        return cls(str(file), file.read_text(encoding="utf-8"), config)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobSpec:
        """Validate a job received over the wire.

        Raises:
            ConfigError: The text is not a valid job config.
        """
        path, text = str(message.get("config_path", "job.yaml")), message.get("config_text")
        if not isinstance(text, str):
            raise ConfigError("submission: config_text missing")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        return cls(path, text, job_config_from_dict(raw, source=path))

    def to_message(self) -> dict[str, Any]:
        """The ``job`` control message."""
        return {"type": "job", "config_path": self.config_path, "config_text": self.config_text}


def serve_submission(master: Master, channel: Channel) -> None:
    """Handle one ``submit`` connection on a daemon master: validate, launch, optionally wait.

    Args:
        master: The running master.
        channel: The authenticated submitter.
    """
    from oobleck.runtime.control.hostfile import parse_hostfile_text
    from oobleck.runtime.control.job import launch_agents

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
        expected = len(hosts) or int(message.get("nodes", 0))
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
    from oobleck.runtime.control.protocol import connect

    message: dict[str, Any] = {**job.to_message(), "type": "submit", "nodes": nodes, "wait": wait}
    if hostfile is not None:
        path = Path(hostfile)
        if not path.is_file():
            raise ConfigError(f"--hostfile {hostfile}: no such file")
        message.update(hostfile=str(path), hostfile_text=path.read_text(encoding="utf-8"))
    channel = connect(host, port, token, "submit")
    try:
        channel.send(message)
        reply = channel.recv(30.0)
        if reply["type"] == "accepted" and wait:
            reply = channel.recv(None)
        return reply
    finally:
        channel.close()
