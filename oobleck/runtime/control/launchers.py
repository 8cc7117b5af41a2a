"""Starting agents: local processes, the system ssh client, or Slurm's srun.

Assumptions:
- Agents are started with the same Python interpreter path as the master (``sys.executable``), so
  remote nodes need the same environment at the same path (a shared file system or an image).
- The token never appears on a command line (``ps`` shows argv to every user): local and srun
  agents inherit it through the environment; ssh agents read it from stdin.
- ssh runs with ``BatchMode=yes`` (never prompts for a password) and
  ``StrictHostKeyChecking=yes`` (never trusts an unknown host key); host keys must be known.
- Every launched agent leads its own process group, so stopping it stops its workers too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.token import TOKEN_ENV

logger = logging.getLogger(__name__)


def is_local_host(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, a 127.x / ::1 address, or our own name.

    Args:
        host: A hostfile host name.

    Returns:
        True when an agent for it should be a local process.
    """
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    names = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    return host in names


def agent_command(master: str, index: int, slots: int, run_dir: Path) -> list[str]:
    """The argv that starts one agent (no secrets in it).

    Args:
        master: ``HOST:PORT`` of the master's control server.
        index: The agent's hostfile index, which becomes its stable node id.
        slots: Workers the agent starts.
        run_dir: The job's run directory (agents write their worker logs there).

    Returns:
        The command, starting with this interpreter's absolute path.
    """
    return [
        sys.executable,
        "-m",
        "oobleck.runtime.agent",
        "--master",
        master,
        "--index",
        str(index),
        "--slots",
        str(slots),
        "--run-dir",
        str(run_dir),
    ]


@dataclass
class LaunchedAgent:
    """A started agent as its launcher sees it (for ssh/srun: the local client process)."""

    index: int
    entry: HostEntry
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Pid of the local process (the agent itself, or its ssh/srun client)."""
        return self.process.pid

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the agent's process group, escalating to SIGKILL; never raises, idempotent.

        Args:
            timeout_s: Grace period after SIGTERM.
        """
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout_s)
        except ProcessLookupError:
            pass


class Launcher(ABC):
    """Starts one agent process for a hostfile entry."""

    @abstractmethod
    def command(self, entry: HostEntry, agent_argv: list[str]) -> list[str]:
        """The local argv that starts the agent for ``entry`` (tested without running it)."""

    def stdin_secret(self, token: bytes) -> bytes | None:
        """Bytes written to the started process's stdin (ssh: the token); None closes stdin."""
        del token
        return None

    def start(  # noqa: PLR0917 - the six launch facts; a bundle type would only rename them
        self,
        index: int,
        entry: HostEntry,
        agent_argv: list[str],
        env: dict[str, str],
        token: bytes,
        log_path: Path,
    ) -> LaunchedAgent:
        """Start the agent with its output in ``log_path``.

        Args:
            index: The agent's index (its node id).
            entry: The hostfile entry.
            agent_argv: From :func:`agent_command`.
            env: Environment for the started process (the token is added here, not to argv).
            token: The job's shared secret.
            log_path: File receiving the agent's stdout and stderr.

        Returns:
            The handle to the started process.
        """
        argv = self.command(entry, agent_argv)
        secret = self.stdin_secret(token)
        child_env = dict(env)
        if secret is None:
            child_env[TOKEN_ENV] = token.decode()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=child_env,
                stdin=subprocess.PIPE if secret is not None else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if secret is not None and process.stdin is not None:
            process.stdin.write(secret)
            process.stdin.close()
        logger.info("started agent %d on %s (pid %d), log %s", index, entry.host, process.pid, log_path)
        return LaunchedAgent(index, entry, process, log_path)


class LocalLauncher(Launcher):
    """Runs the agent as a child process of the master."""

    def command(self, entry: HostEntry, agent_argv: list[str]) -> list[str]:
        """The agent argv unchanged."""
        del entry
        return list(agent_argv)


class SshLauncher(Launcher):
    """Runs the agent on a remote host with the system ssh client; the token goes over stdin."""

    def __init__(self, workdir: Path | None = None) -> None:
        """Args:
        workdir: Remote working directory (default: the master's current directory).
        """
        self.workdir = workdir or Path.cwd()

    def command(self, entry: HostEntry, agent_argv: list[str]) -> list[str]:
        """``ssh -o BatchMode=yes -o StrictHostKeyChecking=yes [-p P] HOST 'cd DIR && read && exec ...'``."""
        remote = (
            f"cd {shlex.quote(str(self.workdir))} && IFS= read -r {TOKEN_ENV} && export {TOKEN_ENV} && "
            f"exec {shlex.join(agent_argv)}"
        )
        argv = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ServerAliveInterval=5",
        ]
        if entry.port is not None:
            argv += ["-p", str(entry.port)]
        return [*argv, entry.host, remote]

    def stdin_secret(self, token: bytes) -> bytes | None:
        """The token and a newline, read by the remote shell into the agent's environment."""
        return token + b"\n"


class SlurmLauncher(Launcher):
    """Runs the agent as a one-task job step on one allocated node (srun exports our environment)."""

    def command(self, entry: HostEntry, agent_argv: list[str]) -> list[str]:
        """``srun --nodes=1 --ntasks=1 --nodelist=HOST --overlap --kill-on-bad-exit=0 ...``."""
        return [
            "srun",
            "--nodes=1",
            "--ntasks=1",
            f"--nodelist={entry.host}",
            "--overlap",
            "--export=ALL",
            *agent_argv,
        ]


def launcher_for(entry: HostEntry, *, slurm: bool) -> Launcher:
    """Pick the launcher for one hostfile entry.

    Args:
        entry: The host to start an agent on.
        slurm: Whether the hosts came from a Slurm allocation.

    Returns:
        Local for this machine, srun inside Slurm, ssh otherwise.
    """
    if is_local_host(entry.host):
        return LocalLauncher()
    return SlurmLauncher() if slurm else SshLauncher()
