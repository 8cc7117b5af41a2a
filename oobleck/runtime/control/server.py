"""A threaded TCP server that authenticates every connection before handing it to a handler.

Assumptions:
- Connections are few (one per agent, a handful of submitters), so a thread per connection is
  simpler and fast enough; the accept loop never blocks on a handshake.
- A connection that fails the handshake or later sends a bad frame is logged and closed; the
  server and every other connection keep running (the "bad frame closes that connection only" rule).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable

from oobleck.errors import ConfigError
from oobleck.runtime.control.protocol import (
    MAX_FRAME_BYTES,
    Channel,
    ConnectionClosedError,
    ProtocolError,
    server_handshake,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Channel, str], None]
"""Called on its own thread with an authenticated channel and the client's role; owns the channel."""


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
    ) -> None:
        """Bind at once (so the port is known) and start accepting on a daemon thread.

        Args:
            token: The job's shared secret.
            handler: Called with each authenticated channel and its role.
            host: Bind address; loopback by default.
            port: Bind port; 0 picks a free one.
            max_frame_bytes: Payload cap for every connection.
        """
        self._token = token
        self._handler = handler
        self._max_frame_bytes = max_frame_bytes
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
        while not self._closed.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            peer = f"{addr[0]}:{addr[1]}"
            threading.Thread(
                target=self._serve, args=(conn, peer), name=f"control-{peer}", daemon=True
            ).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            channel, role = server_handshake(conn, self._token, peer, max_frame_bytes=self._max_frame_bytes)
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
