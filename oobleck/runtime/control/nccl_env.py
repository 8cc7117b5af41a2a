"""The NCCL settings the agent gives every worker: abortable communicators, non-blocking init.

Torch-free (the agent sets them without loading torch); the abort they make possible is
:func:`oobleck.runtime.control.sever.abort_communicators`.
"""

from __future__ import annotations

from collections.abc import Mapping

NCCL_ENV_DEFAULTS: dict[str, str] = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2",
    "TORCH_NCCL_USE_COMM_NONBLOCKING": "1",
}
"""NCCL settings of every worker unless the user set them. ``ASYNC_ERROR_HANDLING=2`` (clean up
only): the watchdog aborts a communicator whose collective errs or times out, so a blocked rank
wakes with an error and the *process survives* to recover (torch's default 3 would end it).
``USE_COMM_NONBLOCKING=1``: communicator init and abort do not block on a dead peer, so a rebuild
cannot hang in ``ncclCommInitRank``."""


def nccl_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The NCCL variables to add to a worker's environment (those ``environ`` does not set).

    Args:
        environ: The environment the worker would inherit.

    Returns:
        Each of :data:`NCCL_ENV_DEFAULTS` absent from ``environ``.
    """
    return {name: value for name, value in NCCL_ENV_DEFAULTS.items() if name not in environ}
