"""A test worker module (the agent's documented ``OOBLECK_WORKER_MODULE`` hook) holding a user socket.

Before training it connects to ``OOBLECK_TEST_USER_SOCKET`` (``HOST:PORT``) and a daemon thread
sends ``<node> <local_rank> <time>`` lines on that one connection every 0.1 s for the life of the
process: a stand-in for the logger, W&B or data-loader socket of a real job, which a recovery must
leave open. Then it runs the ordinary worker (``oobleck.runtime.worker.main``).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from oobleck.runtime import worker

USER_SOCKET_ENV = "OOBLECK_TEST_USER_SOCKET"
"""``HOST:PORT`` of the test's line collector."""
INTERVAL_S = 0.1
"""Seconds between two lines."""


def _send_lines(sock: socket.socket, ident: str) -> None:
    while True:
        try:
            sock.sendall(f"{ident} {time.time()}\n".encode())
        except OSError:
            return  # NOTE: the connection was cut: the collector sees it end here.
        time.sleep(INTERVAL_S)


def main() -> int:
    """Open the user socket, start its sender, then train as the ordinary worker does."""
    host, _, port = os.environ[USER_SOCKET_ENV].rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30.0)
    ident = f"{os.environ.get('OOBLECK_NODE', '?')} {os.environ.get('LOCAL_RANK', '0')}"
    threading.Thread(target=_send_lines, args=(sock, ident), name="user-socket", daemon=True).start()
    return worker.main()


if __name__ == "__main__":
    sys.exit(main())
