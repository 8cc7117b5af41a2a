"""Tests for the control wire protocol: framing, MACs, sequence numbers, handshake."""

from __future__ import annotations

import pickle
import socket
import struct
import threading

import pytest

from oobleck.runtime.control.protocol import (
    AuthenticationError,
    Channel,
    ConnectionClosedError,
    ProtocolError,
    client_handshake,
    server_handshake,
)

TOKEN = b"0123456789abcdef0123456789abcdef"


def _pair(server_token: bytes = TOKEN, client_token: bytes = TOKEN, max_frame_bytes: int = 1 << 20):
    """Return (server_channel_or_exc, client_channel_or_exc) over a socketpair."""
    a, b = socket.socketpair()
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            result["server"] = server_handshake(a, server_token, "test", max_frame_bytes=max_frame_bytes)[0]
        except Exception as exc:  # the test inspects it
            result["server"] = exc
            a.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        result["client"] = client_handshake(b, client_token, "agent", "test", max_frame_bytes=max_frame_bytes)
    except Exception as exc:
        result["client"] = exc
        b.close()
    thread.join(5)
    return result["server"], result["client"]


def test_roundtrip_both_directions():
    """Messages sent either way arrive intact and in order."""
    server, client = _pair()
    client.send({"type": "hello", "n": 1})
    client.send({"type": "hello", "n": 2})
    server.send({"type": "reply", "values": [1, 2.5, "x"]})
    assert server.recv(1) == {"type": "hello", "n": 1}
    assert server.recv(1) == {"type": "hello", "n": 2}
    assert client.recv(1) == {"type": "reply", "values": [1, 2.5, "x"]}
    server.close()
    client.close()


def test_wrong_token_fails_on_both_ends():
    """A client with a different token cannot complete the handshake, and neither can the server."""
    server, client = _pair(client_token=b"f" * 32)
    assert isinstance(server, ProtocolError | ConnectionError)
    assert isinstance(client, AuthenticationError)


def test_recv_timeout_and_clean_close():
    """recv times out when nothing arrives and reports a clean close distinctly."""
    server, client = _pair()
    with pytest.raises(TimeoutError):
        server.recv(0.05)
    client.close()
    with pytest.raises(ConnectionClosedError):
        server.recv(1)
    server.close()
    server.close()  # idempotent


def _raw_socket(channel: Channel) -> socket.socket:
    return channel._sock


def test_replayed_frame_is_rejected():
    """Re-sending a captured frame (same seq and MAC) is refused as a replay."""
    server, client = _pair()
    sent: list[bytes] = []
    sock = _raw_socket(client)
    original = sock.sendall

    class Recorder:
        def __getattr__(self, name):
            return getattr(sock, name)

        def sendall(self, data):
            sent.append(data)
            original(data)

    client._sock = Recorder()
    client.send({"type": "heartbeat"})
    assert server.recv(1)["type"] == "heartbeat"
    sock.sendall(sent[0])
    with pytest.raises(ProtocolError, match="sequence"):
        server.recv(1)


def test_tampered_payload_fails_mac():
    """Flipping one payload byte makes the MAC check fail."""
    server, client = _pair()
    payload = b'{"type":"x"}'
    header = struct.pack(">IQ32s", len(payload), 1, b"\0" * 32)
    _raw_socket(client).sendall(header + payload)
    with pytest.raises(ProtocolError, match="MAC"):
        server.recv(1)


def test_oversized_frame_rejected_before_reading_payload():
    """A header announcing more than the cap is refused without waiting for the payload."""
    server, client = _pair(max_frame_bytes=1024)
    _raw_socket(client).sendall(struct.pack(">IQ32s", 4096, 1, b"\0" * 32))
    with pytest.raises(ProtocolError, match="exceeds"):
        server.recv(1)
    with pytest.raises(ProtocolError, match="exceeds"):
        client.send({"type": "big", "blob": "x" * 2048})


def test_pickle_payload_is_refused():
    """A correctly MAC'd frame whose payload is a pickle is still refused: only JSON objects pass."""
    server, client = _pair()
    import hashlib
    import hmac

    payload = pickle.dumps({"type": "x"})
    mac = hmac.new(client._key, b"c2s" + struct.pack(">QI", 1, len(payload)) + payload, hashlib.sha256)
    _raw_socket(client).sendall(struct.pack(">IQ32s", len(payload), 1, mac.digest()) + payload)
    with pytest.raises(ProtocolError, match="JSON"):
        server.recv(1)


def test_message_without_type_is_refused_on_send():
    """send() refuses a message that has no string type (receivers would reject it anyway)."""
    _, client = _pair()
    with pytest.raises(ProtocolError):
        client.send({"kind": "x"})
