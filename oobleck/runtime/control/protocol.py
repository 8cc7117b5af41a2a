"""The control-plane wire protocol: authenticated, MAC'd, length-prefixed JSON frames.

Frame layout (all integers big-endian)::

    length:u32 | seq:u64 | mac:32 bytes | payload: `length` bytes of UTF-8 JSON (an object with "type")

``mac = HMAC-SHA256(key, direction | seq | length | payload)``, where ``direction`` is ``b"c2s"`` or
``b"s2c"`` so a frame cannot be reflected back to its sender. Sequence numbers count up by exactly
one per direction; any other value is a replay (or a reordering, impossible on TCP) and is refused.

Handshake (mutual, proves knowledge of the token without sending it)::

    server -> client  challenge {nonce_s}            MAC'd with the token, seq 0
    client -> server  auth {nonce_c, role, proof}    proof = HMAC(token, "auth"|nonce_s|nonce_c|role)
    server -> client  auth_ok                        MAC'd with the session key, seq 0
    session key = HMAC(token, "session"|nonce_s|nonce_c); data frames then start at seq 1

Assumptions:
- No pickle, ever: payloads are JSON, checked to be an object with a string ``"type"``.
- The size cap is checked from the header, before the payload is read, so an oversized frame costs
  the receiver nothing; a raw pickle stream reads as a huge or malformed length and is refused.
- A frame that fails any check raises :class:`ProtocolError`; the caller closes that connection only.
- Confidentiality is out of scope (use a private network or an ssh tunnel); integrity and
  authenticity are in scope.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import select
import socket
import struct
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change of the frame layout or the handshake."""

MAX_FRAME_BYTES = 1 << 20
"""Largest accepted payload (1 MiB): control messages are small; model state never travels here."""

IO_TIMEOUT_S = 10.0
"""Longest a started frame may take to arrive whole, or to leave; stops a peer that stalls or
trickles mid-frame (the deadline covers the frame, not each read)."""

HANDSHAKE_TIMEOUT_S = 5.0
"""Longest the whole handshake may take; a client that connects and stays silent is dropped."""

_HEADER = struct.Struct(">IQ32s")
_C2S = b"c2s"
_S2C = b"s2c"


class ProtocolError(ConnectionError):
    """A frame or handshake failed a check; the connection it came on must be closed."""


class AuthenticationError(ProtocolError):
    """The peer did not prove knowledge of the token."""


class ConnectionClosedError(ConnectionError):
    """The peer closed the connection cleanly between frames."""


def _mac(key: bytes, direction: bytes, seq: int, payload: bytes) -> bytes:
    return hmac.new(key, direction + struct.pack(">QI", seq, len(payload)) + payload, hashlib.sha256).digest()


def _wait_readable(sock: socket.socket, timeout_s: float | None) -> bool:
    """Whether ``sock`` has data (or EOF) within ``timeout_s``; poll, so any fd number works."""
    if sock.fileno() < 0:
        raise ConnectionClosedError("the channel was closed")
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(None if timeout_s is None else max(0, int(timeout_s * 1000))))


def _recv_exact(sock: socket.socket, size: int, deadline: float, what: str) -> bytes:
    """Read exactly ``size`` bytes before ``deadline`` (monotonic), however slowly they trickle in.

    NOTE: the deadline covers the whole read, not each ``recv``: a peer that sends one byte a second
    (slowloris) would otherwise hold the connection for as long as the frame is long. The socket's
    own timeout is left alone (a sender thread may be using it).
    """
    chunks = bytearray()
    while len(chunks) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _wait_readable(sock, remaining):
            raise ProtocolError(f"{what} did not arrive within its deadline (peer too slow or stalled)")
        try:
            chunk = sock.recv(size - len(chunks))
        except TimeoutError as exc:
            raise ProtocolError(f"{what} stalled") from exc
        except BlockingIOError:
            continue
        if not chunk:
            if chunks:
                raise ProtocolError("connection closed mid-frame")
            raise ConnectionClosedError("peer closed the connection")
        chunks.extend(chunk)
    return bytes(chunks)


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON ({exc.__class__.__name__})") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("payload is not a JSON object with a string 'type'")
    return message


class Channel:
    """One authenticated, bidirectional message stream over a connected socket.

    ``send`` may be called from any thread (a lock serialises frames); ``recv`` from one thread at a
    time. ``close`` never raises and is safe to call twice.
    """

    def __init__(
        self,
        sock: socket.socket,
        key: bytes,
        *,
        is_server: bool,
        peer: str,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        frame_timeout_s: float = IO_TIMEOUT_S,
    ) -> None:
        """Wrap a socket whose handshake has completed.

        Args:
            sock: The connected socket; the channel owns it from now on.
            key: The session key both ends derived in the handshake.
            is_server: Which end this is (selects the direction labels).
            peer: A printable name of the other end, for log lines.
            max_frame_bytes: Payload size cap in both directions.
            frame_timeout_s: Longest a started frame may take to arrive whole, or to leave.
        """
        self._sock = sock
        self._key = key
        self._send_dir, self._recv_dir = (_S2C, _C2S) if is_server else (_C2S, _S2C)
        self._send_seq = 0
        self._recv_seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self.peer = peer
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout_s = frame_timeout_s
        sock.settimeout(frame_timeout_s)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def send(self, message: dict[str, Any]) -> None:
        """Serialise, MAC and send one message.

        Args:
            message: A JSON-serialisable dict with a string ``"type"``.

        Raises:
            ProtocolError: The message is too large or has no type.
            OSError: The connection is broken.
        """
        if not isinstance(message.get("type"), str):
            raise ProtocolError("a message needs a string 'type'")
        payload = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
        if len(payload) > self.max_frame_bytes:
            raise ProtocolError(f"message of {len(payload)} bytes exceeds the {self.max_frame_bytes} cap")
        with self._lock:
            self._send_seq += 1
            seq = self._send_seq
            header = _HEADER.pack(len(payload), seq, _mac(self._key, self._send_dir, seq, payload))
            self._sock.sendall(header + payload)

    def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Receive and verify the next message.

        Args:
            timeout_s: Longest to wait for the *start* of a frame; None waits forever.

        Returns:
            The decoded message.

        Raises:
            TimeoutError: No frame started within ``timeout_s``.
            ConnectionClosedError: The peer closed the connection between frames.
            ProtocolError: The frame is oversized, mis-MAC'd, replayed or not a JSON object.
        """
        # NOTE: waiting for the *start* of a frame may take forever (an idle link); once it started,
        # the whole frame must arrive within frame_timeout_s.
        if not _wait_readable(self._sock, timeout_s):
            raise TimeoutError(f"no message from {self.peer} within {timeout_s} s")
        deadline = time.monotonic() + self.frame_timeout_s
        length, seq, mac = _HEADER.unpack(_recv_exact(self._sock, _HEADER.size, deadline, "frame header"))
        if length > self.max_frame_bytes:
            raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_frame_bytes} cap")
        payload = _recv_exact(self._sock, length, deadline, f"frame of {length} bytes")
        if not hmac.compare_digest(mac, _mac(self._key, self._recv_dir, seq, payload)):
            raise ProtocolError(f"bad MAC on frame seq={seq}")
        if seq != self._recv_seq + 1:
            raise ProtocolError(f"sequence number {seq}, expected {self._recv_seq + 1} (replayed frame?)")
        self._recv_seq = seq
        return _decode(payload)

    def close(self) -> None:
        """Close the connection; never raises, safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _send_raw(sock: socket.socket, key: bytes, direction: bytes, seq: int, message: dict[str, Any]) -> None:
    payload = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    sock.sendall(_HEADER.pack(len(payload), seq, _mac(key, direction, seq, payload)) + payload)


def _recv_raw(  # noqa: PLR0917 - the frame's five facts plus its deadline; private helper
    sock: socket.socket, key: bytes, direction: bytes, seq: int, expect: str, deadline: float
) -> dict[str, Any]:
    what = f"handshake '{expect}'"
    length, got_seq, mac = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline, what))
    if length > 4096:
        raise ProtocolError(f"handshake frame of {length} bytes exceeds 4096")
    payload = _recv_exact(sock, length, deadline, what)
    if got_seq != seq or not hmac.compare_digest(mac, _mac(key, direction, seq, payload)):
        raise AuthenticationError(f"handshake '{expect}' frame failed its MAC check (wrong token?)")
    message = _decode(payload)
    if message["type"] != expect or message.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"expected handshake '{expect}' v{PROTOCOL_VERSION}, got {message['type']!r}")
    return message


def _proof(token: bytes, nonce_s: str, nonce_c: str, role: str) -> str:
    return hmac.new(token, f"auth|{nonce_s}|{nonce_c}|{role}".encode(), hashlib.sha256).hexdigest()


def _session_key(token: bytes, nonce_s: str, nonce_c: str) -> bytes:
    return hmac.new(token, f"session|{nonce_s}|{nonce_c}".encode(), hashlib.sha256).digest()


def server_handshake(
    sock: socket.socket,
    token: bytes,
    peer: str,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    frame_timeout_s: float = IO_TIMEOUT_S,
) -> tuple[Channel, str]:
    """Authenticate a freshly accepted connection; the whole handshake has one deadline.

    Args:
        sock: The accepted socket.
        token: The job's shared secret.
        peer: Printable peer address for log lines.
        max_frame_bytes: Payload cap of the resulting channel.
        handshake_timeout_s: Longest the whole handshake may take, however the bytes trickle in.
        frame_timeout_s: Per-frame deadline of the resulting channel.

    Returns:
        The channel and the role the client declared (``"agent"``, ``"worker"``, ``"submit"``).

    Raises:
        AuthenticationError: The client does not know the token.
        ProtocolError: The client sent something that is not the handshake, or took too long.
    """
    deadline = time.monotonic() + handshake_timeout_s
    sock.settimeout(handshake_timeout_s)
    nonce_s = secrets.token_hex(16)
    _send_raw(sock, token, _S2C, 0, {"type": "challenge", "version": PROTOCOL_VERSION, "nonce": nonce_s})
    auth = _recv_raw(sock, token, _C2S, 0, "auth", deadline)
    nonce_c, role, proof = auth.get("nonce"), auth.get("role"), auth.get("proof")
    if (
        not (isinstance(nonce_c, str) and isinstance(role, str) and isinstance(proof, str))
        or len(nonce_c) < 32
    ):
        raise ProtocolError("malformed auth frame")
    if not hmac.compare_digest(proof.encode(), _proof(token, nonce_s, nonce_c, role).encode()):
        raise AuthenticationError("client proof does not match the token")
    if time.monotonic() > deadline:
        raise ProtocolError(f"handshake took longer than {handshake_timeout_s} s")
    key = _session_key(token, nonce_s, nonce_c)
    _send_raw(sock, key, _S2C, 0, {"type": "auth_ok", "version": PROTOCOL_VERSION})
    channel = Channel(
        sock, key, is_server=True, peer=peer, max_frame_bytes=max_frame_bytes, frame_timeout_s=frame_timeout_s
    )
    return channel, role


def client_handshake(
    sock: socket.socket, token: bytes, role: str, peer: str, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Channel:
    """Authenticate to a server over a connected socket (mutual: the server proves itself too).

    Args:
        sock: The connected socket.
        token: The job's shared secret.
        role: What this client is (``"agent"``, ``"worker"``, ``"submit"``).
        peer: Printable server address for log lines.
        max_frame_bytes: Payload cap of the resulting channel.

    Returns:
        The authenticated channel.

    Raises:
        AuthenticationError: The server does not know the token (or we have the wrong one).
        ProtocolError: The server did not follow the handshake.
    """
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    challenge = _recv_raw(sock, token, _S2C, 0, "challenge", deadline)
    nonce_s = challenge.get("nonce")
    if not isinstance(nonce_s, str) or len(nonce_s) < 32:
        raise ProtocolError("malformed challenge frame")
    nonce_c = secrets.token_hex(16)
    auth = {
        "type": "auth",
        "version": PROTOCOL_VERSION,
        "nonce": nonce_c,
        "role": role,
        "proof": _proof(token, nonce_s, nonce_c, role),
    }
    _send_raw(sock, token, _C2S, 0, auth)
    key = _session_key(token, nonce_s, nonce_c)
    try:
        _recv_raw(sock, key, _S2C, 0, "auth_ok", deadline)
    except ConnectionClosedError as exc:
        raise AuthenticationError(
            f"{peer} closed the connection during the handshake (wrong token?)"
        ) from exc
    return Channel(sock, key, is_server=False, peer=peer, max_frame_bytes=max_frame_bytes)


def connect(
    host: str, port: int, token: bytes, role: str, *, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> Channel:
    """Open an authenticated channel to a control server.

    Args:
        host: Server address.
        port: Server port.
        token: The job's shared secret.
        role: What this client is.
        timeout_s: Longest to wait for the TCP connection.

    Returns:
        The authenticated channel.

    Raises:
        OSError: The server cannot be reached.
        AuthenticationError: The token does not match.
    """
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return client_handshake(sock, token, role, f"{host}:{port}")
    except BaseException:
        sock.close()
        raise
