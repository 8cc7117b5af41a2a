"""Shared harness of the multi-process engine tests: one OS process per rank, bounded, cleaned up."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import preloaded
from tests.integration.harness import Run, free_port, run_standalone

ArgvOfRank = Callable[[int, int], list[str]]
"""``(rank, port) -> argv`` of one rank's process."""
EnvOfRank = Callable[[int, int], dict[str, str]]
"""``(rank, port) -> extra environment`` of one rank's process."""


def run_ranks(
    world: int, out: Path, argv: ArgvOfRank, env: EnvOfRank | None = None, timeout_s: float = 150.0
) -> None:
    """Start ``world`` rank processes on a fresh localhost port and require every one to exit 0.

    The ranks are forked from the session's preloaded server (:mod:`tests.integration.preloaded`:
    torch and transformers imported once, not once per rank). Each rank logs to
    ``out/rank<r>.log``; all ranks share one deadline, and any rank still running at the end (also
    on failure) is killed by pid, so no process outlives the test.

    Args:
        world: Number of ranks.
        out: Folder for logs (created); the ranks' own outputs go wherever their argv says.
        argv: Command line of each rank, given its rank and the rendezvous port.
        env: Extra environment of each rank (``OMP_NUM_THREADS=1`` is always set).
        timeout_s: Bound on the whole run.
    """
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = [
        preloaded.start(
            argv(rank, port),
            {**os.environ, "OMP_NUM_THREADS": "1", **(env(rank, port) if env is not None else {})},
            out / f"rank{rank}.log",
        )
        for rank in range(world)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.join(max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    codes = [proc.exitcode for proc in procs]
    logs = "\n".join((out / f"rank{r}.log").read_text()[-2000:] for r in range(world))
    assert codes == [0] * world, f"exit codes {codes}\n{logs}"


@pytest.fixture(scope="session")
def launch_ranks() -> Callable[..., None]:
    """:func:`run_ranks`, for tests and module-scoped fixtures."""
    return run_ranks


FaultFree = Callable[[Path], Run]
"""``config -> Run``: the fault-free standalone run of a job (see :func:`fault_free`)."""


@pytest.fixture(scope="session")
def fault_free(tmp_path_factory: pytest.TempPathFactory) -> FaultFree:
    """The fault-free reference of a job, run once per session per distinct job text.

    Every elastic test compares a faulty run with the fault-free run of the same job. With exact
    accumulation that reference is one standalone worker process (:func:`run_standalone`) instead
    of a master, its agents and their workers, and modules that run the same job text share it: the
    cache is keyed by the YAML text, so two jobs that differ in anything get two runs.
    """
    folder = tmp_path_factory.mktemp("fault_free")
    runs: dict[str, Run] = {}

    def reference(config: Path) -> Run:
        text = config.read_text()
        if text not in runs:
            key = hashlib.sha256(text.encode()).hexdigest()[:16]
            job = folder / f"{key}.yaml"
            job.write_text(text)
            runs[text] = run_standalone(folder / key, job)
        return runs[text]

    return reference
