"""Cut this process's process-group connections so a collective blocked on a lost peer fails now.

Why: with gloo (torch 2.13) neither ``destroy_process_group`` nor ``ProcessGroup.abort()`` wakes a
collective that is already blocked waiting on a hung or departed peer; the in-flight work keeps
the group alive until the collective timeout (verified: a 3-rank all-reduce with one rank stopped
stays blocked after both survivors destroy their groups). Shutting the TCP sockets down makes
every pending gloo read fail at once with "Connection closed by peer", here and on every peer
that talks to us, which is the cascade the recovery relies on.

Assumptions:
- Linux (``/proc/self/fd``); elsewhere this does nothing and the collective timeout applies.
- The worker's only TCP connections are process-group pairs and the rendezvous-store client;
  the store connection is recognised by its peer port and kept. The agent link is a UNIX socket.
- ``shutdown`` acts on the socket, not the descriptor, so shutting down a ``dup`` of a descriptor
  owned by gloo is enough, and gloo later closes its own descriptor as usual.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection
from pathlib import Path

logger = logging.getLogger(__name__)


def sever_tcp_connections(keep_peer_ports: Collection[int]) -> int:
    """Shut down every connected TCP socket of this process except those to ``keep_peer_ports``.

    Args:
        keep_peer_ports: Remote ports whose connections must survive (the store's).

    Returns:
        How many connections were shut down.
    """
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return 0
    severed = 0
    for entry in fd_dir.iterdir():
        try:
            if not str(entry.readlink()).startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(entry.name)))
        except (OSError, ValueError):
            continue
        try:
            tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            if tcp and sock.getpeername()[1] not in keep_peer_ports:
                sock.shutdown(socket.SHUT_RDWR)
                severed += 1
        except OSError:
            pass  # NOTE: listening or already-closed sockets have no peer; nothing to cut.
        finally:
            sock.close()
    logger.debug("severed %d process-group connections", severed)
    return severed
