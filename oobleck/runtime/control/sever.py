"""Abort a generation's communication so a rank blocked on a lost peer fails now, per backend.

Why: with gloo (torch 2.13) neither ``destroy_process_group`` nor ``ProcessGroup.abort()`` wakes a
collective that is already blocked waiting on a hung or departed peer; the in-flight work keeps
the group alive until the collective timeout (verified: a 3-rank all-reduce with one rank stopped
stays blocked after both survivors destroy their groups). Shutting the groups' TCP sockets down
makes every pending gloo read fail at once with "Connection closed by peer", here and on every
peer that talks to us, which is the cascade the recovery relies on. With NCCL a blocked rank is
woken only by aborting its communicators (``ncclCommAbort``), which torch exposes as
``distributed_c10d._abort_process_group``.

Only sockets the generation created are cut, never the process's others (a logger's, W&B's, a
data loader's): :class:`GroupSockets` records which sockets appeared while the worker built a
generation (store client, world and subgroups, transfers) and cuts exactly those.

Assumptions:
- Linux (``/proc/self/fd``); elsewhere nothing is recorded or cut and the collective timeout applies.
- Gloo connects eagerly (torch 2.13's default; ``TORCH_GLOO_LAZY_INIT`` unset): every pair socket
  of a group exists when ``init_process_group``/``new_group`` returns, so inside the recorded window.
- A TCP socket another thread of the worker opens *during* that window is taken for the
  generation's and cut with it; the training thread, which builds the generation, runs no user code
  then. Sockets open before the window, or opened after it, are never touched.
- Socket inode numbers are not reused while the process runs (sockfs numbers them incrementally),
  and a descriptor is checked to still name the recorded inode before it is shut down (gloo may
  have closed it and the number been reused by another socket since the build).
- ``shutdown`` acts on the socket, not the descriptor, so shutting down a ``dup`` of a descriptor
  owned by gloo is enough, and gloo later closes its own descriptor as usual.
- NCCL path (``abort_communicators``, the settings of :mod:`~oobleck.runtime.control.nccl_env`):
  written against torch 2.13's API and exercised here only on gloo groups; unproven on GPU hardware.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

logger = logging.getLogger(__name__)

_FD_DIR = Path("/proc/self/fd")


def socket_inodes() -> dict[int, int]:
    """This process's open sockets: inode -> one descriptor; empty without ``/proc``."""
    if not _FD_DIR.is_dir():
        return {}
    found: dict[int, int] = {}
    for entry in _FD_DIR.iterdir():
        try:
            link = str(entry.readlink())
        except (OSError, ValueError):
            continue  # NOTE: closed between listing and reading.
        if link.startswith("socket:[") and link.endswith("]"):
            found.setdefault(int(link[8:-1]), int(entry.name))
    return found


def _shutdown_tcp(fd: int, inode: int) -> bool:
    """Shut down the connected TCP socket ``fd`` if it still is socket ``inode``; never raises."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            os.close(dup)
            return False  # NOTE: the descriptor was closed and reused meanwhile.
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return False
        sock.getpeername()  # NOTE: raises for a listener or an unconnected socket: nothing to cut.
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.close()


class GroupSockets:
    """The TCP sockets of this worker's generations (process groups, store client), to cut on abort.

    A build's sockets are found by listing ``/proc/self/fd`` before and after it; an abort then
    checks only the recorded descriptors (one ``fstat`` each) instead of listing every descriptor
    again, so the cut on a notice costs a few syscalls per socket, not per open file.

    Thread safety: :meth:`building` runs on the training thread while :meth:`sever` may run on the
    link's reader thread at any time, also in the middle of a build (a notice during a rebuild):
    then every socket created so far in the window is cut.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: dict[int, int] = {}
        """Inode -> descriptor of every recorded socket that was open at the end of the last build."""
        self._before: frozenset[int] | None = None

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Record the sockets that appear while the block runs as the generation's.

        Wrap everything that creates a generation's connections: the store client, the world, the
        subgroups and the state transfers. Not reentrant.
        """
        before = frozenset(socket_inodes())
        with self._lock:
            self._before = before
        try:
            yield
        finally:
            now = socket_inodes()
            with self._lock:
                # NOTE: sockets of earlier generations that have closed since are dropped.
                self._owned = {
                    inode: fd for inode, fd in now.items() if inode not in before or inode in self._owned
                }
                self._before = None

    def owned(self) -> dict[int, int]:
        """Inode -> descriptor of the recorded sockets, with those of a build in progress.

        Outside a build this is the record of the last one (a socket closed since is still listed;
        :meth:`sever` skips it); during a build it is read from ``/proc`` and only lists open ones.
        """
        with self._lock:
            owned, before = dict(self._owned), self._before
        if before is None:
            return owned
        now = socket_inodes()
        owned.update((inode, fd) for inode, fd in now.items() if inode not in before)
        return {inode: fd for inode, fd in owned.items() if inode in now}

    def sever(self) -> int:
        """Shut down every recorded connected TCP socket; others of the process stay. Never raises.

        Returns:
            How many connections were shut down.
        """
        severed = sum(_shutdown_tcp(fd, inode) for inode, fd in self.owned().items())
        logger.debug("severed %d process-group connections", severed)
        return severed


def abort_communicators(backend: str) -> bool:
    """Abort every communicator of this process's groups where the backend needs it (NCCL).

    Call before ``destroy_process_group`` on a notice or a communication error: a rank blocked in
    an NCCL collective wakes only when its communicator is aborted, and destroying a group whose
    collective hangs may itself hang. Gloo needs no abort (its groups are woken by
    :meth:`GroupSockets.sever`), so this does nothing there.

    Args:
        backend: The generation's backend (``"nccl"`` or ``"gloo"``).

    Returns:
        Whether communicators were aborted (the world is then gone, as after a destroy).
    """
    if backend != "nccl" or not (dist.is_available() and dist.is_initialized()):
        return False
    from torch.distributed import distributed_c10d

    try:
        # NOTE: torch 2.13 aborts every group, the default one included, inside one NCCL group
        # call (so aborts of several communicators cannot deadlock), then forgets the world.
        distributed_c10d._abort_process_group()
    except Exception as error:  # NOTE: a broken world may fail to abort; destroy follows anyway.
        logger.warning("aborting the NCCL communicators failed: %s", error)
        return False
    return True
