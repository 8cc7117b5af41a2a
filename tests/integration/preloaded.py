"""Rank processes forked from one preloaded server instead of started cold.

A cold ``python -m oobleck.runtime.worker`` spends about 6 s of CPU importing torch and transformers
before its first step, and a tiny test job trains for well under a second of CPU after that: the
engine tests' ranks and the fault-free references were mostly imports. Here they are forked from a
``multiprocessing`` forkserver that imported those modules once per test session (per xdist
worker), the pattern ``torch.multiprocessing`` users know. Each rank is still its own OS process
with its own environment, stdio, gloo process group and exit code, and can be killed by pid.

What this does not test, and where that is tested instead: that a cold interpreter starts a worker
(every elastic test: agents start their workers with ``subprocess`` exactly as in production) and
torchrun's own launch (``test_engine_torchrun.py``).

Assumptions:
    * Nothing the preloaded modules do at import starts a thread or reads the environment the
      ranks set later, except OpenMP's thread count: the server is started with
      ``OMP_NUM_THREADS=1``, the value every rank of these tests gets.
    * An argv is ``[python, -m, module, args...]`` or ``[python, script.py, args...]``.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import sys
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path

PRELOAD = (
    "torch",
    "torch.distributed",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.llama.modeling_llama",
    "transformers.models.opt.modeling_opt",
    "oobleck.runtime.worker",
    "oobleck.runtime.elastic",
    "oobleck.runtime.engine",
)
"""Imported once by the server; every rank forked from it starts with them loaded."""


@functools.cache
def _server() -> ForkServerContext:
    """The forkserver context, its server started (once per process) with :data:`PRELOAD` loaded."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        # NOTE: start now, with the environment OpenMP must see when torch loads in the server.
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return context


def start(argv: list[str], env: dict[str, str], log: Path) -> ForkServerProcess:
    """Start ``argv`` (a Python command line) as a forked rank with ``env``, stdout+stderr to ``log``.

    Returns:
        The started process (``pid``, ``join``, ``kill``, ``exitcode``).
    """
    process = _server().Process(target=_run_python, args=(list(argv), dict(env), str(log)), daemon=False)
    process.start()
    return process


def run(argv: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int:
    """Run ``argv`` as a forked rank to completion; kill it at ``timeout_s``.

    Returns:
        Its exit code (negative: killed by that signal).
    """
    process = start(argv, env, log)
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join()
    assert process.exitcode is not None
    return process.exitcode


def _run_python(argv: list[str], env: dict[str, str], log: str) -> None:
    """In the forked rank: become ``python argv[1:]`` with ``env``, writing to ``log``."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if argv[1] != "-m":
        sys.argv = argv[1:]
        runpy.run_path(argv[1], run_name="__main__")
        return
    module_name, args = argv[2], argv[3:]
    module = sys.modules.get(module_name)
    if module is not None and callable(getattr(module, "main", None)):
        # NOTE: a preloaded entry point is called, not re-run by runpy (which would execute a
        # second copy of a module that is already imported, and warn about it).
        sys.argv = [module.__file__ or module_name, *args]
        sys.exit(module.main(args))
    sys.argv = [module_name, *args]
    runpy.run_module(module_name, run_name="__main__", alter_sys=True)
