"""Tests for the master's per-connection outbox: never blocks its caller, keeps order, closes cleanly."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from oobleck.runtime.control.outbox import Outbox
from oobleck.runtime.control.protocol import (
    Channel,
    ConnectionClosedError,
    client_handshake,
    server_handshake,
)

TOKEN = b"0123456789abcdef0123456789abcdef"
BIG = "x" * 100_000
"""A payload larger than the shrunken socket buffers: its frame cannot leave in one send."""


def _pair(*, small_buffers: bool = False) -> tuple[Channel, Channel]:
    """(master end, agent end) of an authenticated socketpair; tiny kernel buffers if asked."""
    a, b = socket.socketpair()
    if small_buffers:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server: list[Channel] = []
    thread = threading.Thread(target=lambda: server.append(server_handshake(a, TOKEN, "test")[0]))
    thread.start()
    client = client_handshake(b, TOKEN, "agent", "test")
    thread.join(5)
    return server[0], client


def test_a_peer_that_stops_reading_blocks_no_put_and_loses_no_message():
    """Messages queue behind a peer that is not reading; all arrive whole, in order, once it reads."""
    master, agent = _pair(small_buffers=True)
    outbox = Outbox(master, "agent")
    started = time.monotonic()
    for n in range(20):
        outbox.put({"type": "job", "n": n, "text": BIG})
    elapsed = time.monotonic() - started
    # NOTE: 2 MB into a few KB of buffers: a put that waited for the reader would wait forever.
    assert elapsed < 2.0
    # NOTE: Channel.recv checks every frame's MAC and sequence number: any reordering fails here.
    for n in range(20):
        assert agent.recv(5) == {"type": "job", "n": n, "text": BIG}
    outbox.put({"type": "membership", "generation": 1})
    assert agent.recv(5) == {"type": "membership", "generation": 1}
    outbox.close()
    assert outbox.wait_closed(5)
    agent.close()


def test_close_sends_what_is_queued_then_ends_the_connection():
    """Messages put before close() arrive; those after it are dropped; the peer then sees the end."""
    master, agent = _pair(small_buffers=True)
    outbox = Outbox(master, "agent")
    for n in range(5):
        outbox.put({"type": "job", "n": n, "text": BIG})
    outbox.close()
    outbox.put({"type": "job", "n": 99})
    for n in range(5):
        assert agent.recv(5)["n"] == n
    with pytest.raises(ConnectionClosedError):
        agent.recv(5)
    assert outbox.wait_closed(5)
    agent.close()


def test_an_unsendable_message_closes_the_connection_without_raising():
    """A message over the frame cap is a failed send, as on the wire: put returns, the peer sees the end."""
    master, agent = _pair()
    outbox = Outbox(master, "agent")
    outbox.put({"type": "job", "text": "x" * (master.max_frame_bytes + 1)})
    with pytest.raises(ConnectionClosedError):
        agent.recv(5)
    assert outbox.wait_closed(5)
    agent.close()
