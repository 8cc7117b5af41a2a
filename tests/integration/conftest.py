"""Shared harness of the multi-process engine tests: one OS process per rank, bounded, cleaned up."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import free_port

ArgvOfRank = Callable[[int, int], list[str]]
"""``(rank, port) -> argv`` of one rank's process."""
EnvOfRank = Callable[[int, int], dict[str, str]]
"""``(rank, port) -> extra environment`` of one rank's process."""


def run_ranks(
    world: int, out: Path, argv: ArgvOfRank, env: EnvOfRank | None = None, timeout_s: float = 150.0
) -> None:
    """Start ``world`` rank processes on a fresh localhost port and require every one to exit 0.

    Each rank logs to ``out/rank<r>.log``; all ranks share one deadline, and any rank still running
    at the end (also on failure) is killed by pid, so no process outlives the test.

    Args:
        world: Number of ranks.
        out: Folder for logs (created); the ranks' own outputs go wherever their argv says.
        argv: Command line of each rank, given its rank and the rendezvous port.
        env: Extra environment of each rank (``OMP_NUM_THREADS=1`` is always set).
        timeout_s: Bound on the whole run.
    """
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world):
        extra = env(rank, port) if env is not None else {}
        with (out / f"rank{rank}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    argv(rank, port),
                    env={**os.environ, "OMP_NUM_THREADS": "1", **extra},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [proc.returncode for proc in procs]
    logs = "\n".join((out / f"rank{r}.log").read_text()[-2000:] for r in range(world))
    assert codes == [0] * world, f"exit codes {codes}\n{logs}"


@pytest.fixture(scope="session")
def launch_ranks() -> Callable[..., None]:
    """:func:`run_ranks`, for tests and module-scoped fixtures."""
    return run_ranks
