"""A threaded TCP server that authenticates every connection before handing it to a handler.

Assumptions:
- Connections are few (one per agent, a handful of submitters), so a thread per connection is
  simpler and fast enough; the accept loop never blocks on a handshake.
- A connection that fails the handshake or later sends a bad frame is logged and closed; the
  server and every other connection keep running (the "bad frame closes that connection only" rule).
- Running out of file descriptors (EMFILE/ENFILE) or memory in ``accept`` is transient: the loop
  logs once, backs off and keeps accepting, so the control plane comes back when fds are freed.
- One peer address may hold at most ``max_per_peer`` connections (handshaking or established), so
  a single misbehaving host cannot take every descriptor and thread of the master.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable

from oobleck.errors import ConfigError
from oobleck.runtime.control.protocol import (
    HANDSHAKE_TIMEOUT_S,
    IO_TIMEOUT_S,
    MAX_FRAME_BYTES,
    Channel,
    ConnectionClosedError,
    ProtocolError,
    server_handshake,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Channel, str], None]
"""Called on its own thread with an authenticated channel and the client's role; owns the channel."""

MAX_CONNECTIONS_PER_PEER = 128
"""Connections one peer address may hold at once (every local agent and worker shares 127.0.0.1)."""

_ACCEPT_BACKOFF_MAX_S = 1.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1 or ``localhost``).

    Args:
        host: An address or host name as given to ``--host``.

    Returns:
        True for loopback addresses; False for anything routable, including ``0.0.0.0``.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token_supplied: bool) -> None:
    """Refuse to listen on a routable address unless the user configured a token.

    A generated token protects a loopback master (other local users cannot read the 0600 file), but
    nobody on another machine could know it, so a routable bind without a user token is a mistake.

    Args:
        host: The bind address.
        token_supplied: Whether the token came from the user (env or file), not generated.

    Raises:
        ConfigError: ``host`` is routable and no token was supplied.
    """
    if not is_loopback(host) and not token_supplied:
        raise ConfigError(
            f"--host {host}: binding a non-loopback address needs a shared token; set OOBLECK_TOKEN "
            "or --token-file (0600), or bind 127.0.0.1"
        )


class ControlServer:
    """Listens, authenticates, and runs one handler thread per authenticated connection."""

    def __init__(
        self,
        token: bytes,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        frame_timeout_s: float = IO_TIMEOUT_S,
        max_per_peer: int = MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        """Bind at once (so the port is known) and start accepting on a daemon thread.

        Args:
            token: The job's shared secret.
            handler: Called with each authenticated channel and its role.
            host: Bind address; loopback by default.
            port: Bind port; 0 picks a free one.
            max_frame_bytes: Payload cap for every connection.
            handshake_timeout_s: Deadline of the whole handshake of a connection.
            frame_timeout_s: Deadline of each frame once it started.
            max_per_peer: Connections one peer address may hold at once; more are closed at once.
        """
        self._token = token
        self._handler = handler
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._frame_timeout_s = frame_timeout_s
        self._max_per_peer = max_per_peer
        self._per_peer: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self._thread.start()
        logger.info("control server listening on %s:%d", host, self.port)

    def _accept_loop(self) -> None:
        backoff_s = 0.0
        while not self._closed.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError as exc:
                if self._closed.is_set() or self._sock.fileno() < 0:
                    return
                # NOTE: EMFILE/ENFILE/ENOMEM pass once descriptors are freed: never give up on them.
                if backoff_s == 0.0:
                    logger.error("control: cannot accept connections (%s); backing off and retrying", exc)
                backoff_s = min(max(backoff_s * 2, 0.01), _ACCEPT_BACKOFF_MAX_S)
                self._closed.wait(backoff_s)
                continue
            if backoff_s:
                logger.warning("control: accepting connections again")
                backoff_s = 0.0
            if not self._admit(addr[0]):
                logger.warning(
                    "control: refused a connection from %s: it already holds %d", addr[0], self._max_per_peer
                )
                conn.close()
                continue
            peer = f"{addr[0]}:{addr[1]}"
            try:
                threading.Thread(
                    target=self._serve, args=(conn, peer, addr[0]), name=f"control-{peer}", daemon=True
                ).start()
            except RuntimeError as exc:  # NOTE: "can't start new thread": the same back-pressure.
                logger.error("control: no thread for %s (%s); closing it", peer, exc)
                self._release(addr[0])
                conn.close()

    def _admit(self, address: str) -> bool:
        with self._count_lock:
            if self._per_peer[address] >= self._max_per_peer:
                return False
            self._per_peer[address] += 1
            return True

    def _release(self, address: str) -> None:
        with self._count_lock:
            self._per_peer[address] -= 1
            if self._per_peer[address] <= 0:
                del self._per_peer[address]

    def _serve(self, conn: socket.socket, peer: str, address: str) -> None:
        try:
            self._serve_connection(conn, peer)
        finally:
            self._release(address)

    def _serve_connection(self, conn: socket.socket, peer: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel, role = server_handshake(
                conn,
                self._token,
                peer,
                max_frame_bytes=self._max_frame_bytes,
                handshake_timeout_s=self._handshake_timeout_s,
                frame_timeout_s=self._frame_timeout_s,
            )
        except (ProtocolError, ConnectionClosedError, OSError) as exc:
            logger.warning("control: rejected connection from %s: %s", peer, exc)
            conn.close()
            return
        try:
            self._handler(channel, role)
        except ProtocolError as exc:
            logger.warning("control: closed connection from %s (%s): %s", peer, role, exc)
        except (ConnectionError, OSError) as exc:
            logger.info("control: connection from %s (%s) ended: %s", peer, role, exc)
        except Exception:
            # NOTE: a bug in a handler must cost that connection only, never the server.
            logger.exception("control: handler for %s (%s) failed", peer, role)
        finally:
            channel.close()

    def close(self) -> None:
        """Stop accepting; established handlers end when their peers go. Never raises; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
