"""Running one job end to end on a master: launch the agents, wait for the outcome, clean up.

Assumptions:
- Agents launched here get their hostfile index as node id, so node ids follow the hostfile.
- Remote agents must reach the master, so a hostfile with remote hosts needs a routable bind
  (which in turn needs a user-supplied token, see ``server.check_bind``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from oobleck.errors import ConfigError
from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.jobspec import JobSpec
from oobleck.runtime.control.launchers import agent_command, is_local_host, launcher_for
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.server import is_loopback

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


def check_reachable(hosts: Sequence[HostEntry], bind_host: str) -> None:
    """Refuse remote hosts when the master only listens on loopback.

    Raises:
        ConfigError: Naming the first remote host's hostfile line.
    """
    if not is_loopback(bind_host):
        return
    for entry in hosts:
        if not is_local_host(entry.host):
            raise ConfigError(
                f"{entry.source}: remote host {entry.host!r} cannot reach a master bound to {bind_host}; "
                "pass --host <this machine's address> with OOBLECK_TOKEN set"
            )


def launch_agents(master: Master, hosts: Sequence[HostEntry], *, slurm: bool = False) -> None:
    """Start one agent per hostfile entry; node id = entry index.

    Args:
        master: The running master (its address, port, token and run directory are used).
        hosts: The hostfile entries.
        slurm: Whether the entries came from a Slurm allocation (remote hosts use srun).
    """
    address = f"{master.address}:{master.server.port}"
    env = dict(os.environ)
    for index, entry in enumerate(hosts):
        # NOTE: the job's run dir (a daemon's jobs/<id>/): its agents, logs and workers write there.
        argv = agent_command(address, index, entry.slots, master.job_dir)
        log_path = master.job_dir / f"agent{index}.log"
        agent = launcher_for(entry, slurm=slurm).start(index, entry, argv, env, master.token, log_path)
        master.launched.append(agent)


def run_job(
    master: Master,
    job: JobSpec,
    hosts: Sequence[HostEntry],
    *,
    slurm: bool = False,
    timeout_s: float | None = None,
) -> int:
    """Run ``job`` to completion on agents launched from ``hosts``.

    Args:
        master: A freshly started master.
        job: The validated job.
        hosts: One entry per agent.
        slurm: Whether the hosts came from Slurm.
        timeout_s: Give up after this long (None: wait for the outcome).

    Returns:
        0 when every worker finished, 1 when the job failed or timed out.
    """
    check_reachable(hosts, master.config.host)
    master.submit(job, expected_agents=len(hosts))
    try:
        launch_agents(master, hosts, slurm=slurm)
        outcome = master.wait(timeout_s)
    finally:
        master.close()
    if outcome != "completed":
        logger.error("job %s; logs in %s", outcome, master.config.run_dir)
        return EXIT_FAILED
    return EXIT_OK
