"""The job's rendezvous store, served by the master over the authenticated control protocol.

Workers use it for ``init_process_group``/``new_group`` (through ``PrefixStore``) and for the elastic
records (``ctl/gen<G>/state/...``, planner inputs), through
:class:`~oobleck.runtime.control.store_client.StoreClient`, a ``torch.distributed.Store`` implemented
in Python; every operation is one MAC'd JSON request and reply (``oobleck.runtime.control.protocol``),
values travel base64-encoded. This module is the master's side and never imports torch, so neither
the master nor an agent loads torch (~3 s of CPU and of start-up latency each).

Why a Python store over the HMAC channel, not a loopback ``TCPStore`` plus a tunnel:
- ``TCPStore`` has no authentication at all; bound to loopback it is still open to every local
  user, and remote workers would need a tunnel (ssh, stunnel) that oobleck does not manage.
  Here the only listener is a :class:`ControlServer`, which admits a connection only after a mutual
  HMAC challenge, MACs and sequence-numbers every frame and caps its size.
- Store traffic is small (a few hundred keys per generation, gloo's pair addresses and our records),
  so a Python round trip (~0.2 ms on loopback) is not on any step's critical path: steps never
  touch the store.
- torch 2.13 accepts a Python ``dist.Store`` subclass (the client module says how it is used).
- gloo's own pair listeners (the data plane, unauthenticated) bind the address the host name
  resolves to; a worker of a loopback job sets ``GLOO_SOCKET_IFNAME=lo`` so they stay on loopback.

Assumptions:
- The service is keyed with :func:`store_key` (an HMAC derivation of the job token), so workers,
  which hold only that key (``OOBLECK_STORE_KEY``, set by their agent), can use the store but can
  neither join the control plane as an agent nor submit jobs.
- Sizes are bounded (keys, key length, value size, total bytes) so an authenticated but faulty
  client cannot exhaust the master's memory; every blocking wait is bounded by the caller's
  timeout and by :data:`MAX_WAIT_S`.
- A client that loses its connection (a master restarted on the same address) reconnects with
  backoff for up to ``reconnect_s`` and re-sends the request; requests carry ids so a re-sent
  ``add`` is not applied twice by the same server. The client's ``abandon`` (a failure notice)
  makes every pending and later operation fail at once instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from collections import OrderedDict
from typing import Any

from oobleck.runtime.control.protocol import Channel, ProtocolError
from oobleck.runtime.control.server import ControlServer
from oobleck.runtime.control.store_state import StoreLimitError, StoreState

logger = logging.getLogger(__name__)

STORE_KEY_ENV = "OOBLECK_STORE_KEY"
"""Environment variable holding the store key (hex) of a worker; never the job token."""

MAX_WAIT_S = 1800.0
"""Longest any single blocking store operation may hold a server thread."""

_DEDUP_CLIENTS = 4096
"""Clients whose last reply the service remembers (for a request re-sent after a broken connection)."""


def store_key(token: bytes) -> bytes:
    """The store service's key: ``HMAC-SHA256(token, "oobleck-store-v1")``.

    A worker holding it cannot recover the token, so it cannot act as an agent or a submitter.

    Args:
        token: The job's shared secret.

    Returns:
        32 key bytes.
    """
    return hmac.new(token, b"oobleck-store-v1", hashlib.sha256).digest()


def encode_value(value: bytes) -> str:
    """A store value as it travels in a request or reply (base64)."""
    return base64.b64encode(value).decode("ascii")


def decode_value(text: Any) -> bytes:
    """A store value from a request or reply.

    Raises:
        ValueError: ``text`` is not a base64 string.
    """
    if not isinstance(text, str):
        raise ValueError("value must be a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _keys(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise ValueError("keys must be a list of strings")
    return raw


def _timeout(raw: Any) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0:
        raise ValueError("timeout_s must be a number >= 0")
    return min(float(raw), MAX_WAIT_S)


def _key(request: dict[str, Any]) -> str:
    key = request.get("key")
    if not isinstance(key, str):
        raise ValueError("key must be a string")
    return key


def execute(state: StoreState, request: dict[str, Any]) -> dict[str, Any]:
    """Apply one decoded request to ``state``; the reply's ``ok`` says whether it succeeded.

    Args:
        state: The store's contents.
        request: ``{"op": ..., ...}`` as a client sent it.

    Returns:
        ``{"ok": True, ...result}`` or ``{"ok": False, "error": kind, "message": text}`` with kind
        ``timeout``, ``limit`` or ``bad_request``.
    """
    op = request.get("op")
    try:
        if op == "set":
            state.set(_key(request), decode_value(request.get("value")))
            return {"ok": True}
        if op == "get":
            value = state.get(_key(request), _timeout(request.get("timeout_s")))
            return {"ok": True, "value": encode_value(value)}
        if op == "add":
            amount = request.get("amount")
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise ValueError("amount must be an integer")
            return {"ok": True, "value": state.add(_key(request), amount)}
        if op == "compare_set":
            expected, desired = decode_value(request.get("expected")), decode_value(request.get("desired"))
            return {"ok": True, "value": encode_value(state.compare_set(_key(request), expected, desired))}
        if op == "wait":
            state.wait(_keys(request.get("keys")), _timeout(request.get("timeout_s")))
            return {"ok": True}
        if op == "get_present":
            found = state.get_present(_keys(request.get("keys")), _timeout(request.get("timeout_s")))
            return {"ok": True, "value": {k: encode_value(v) for k, v in found.items()}}
        if op == "check":
            return {"ok": True, "value": state.check(_keys(request.get("keys")))}
        if op == "delete_key":
            return {"ok": True, "value": state.delete(_key(request))}
        if op == "num_keys":
            return {"ok": True, "value": state.num_keys()}
        raise ValueError(f"unknown op {op!r}")
    except TimeoutError as exc:
        return {"ok": False, "error": "timeout", "message": str(exc)}
    except StoreLimitError as exc:
        return {"ok": False, "error": "limit", "message": str(exc)}
    except ValueError as exc:
        return {"ok": False, "error": "bad_request", "message": str(exc)}


class StoreService:
    """The master's store: a :class:`ControlServer` keyed with :func:`store_key` serving a state."""

    def __init__(self, token: bytes, host: str, port: int = 0, state: StoreState | None = None) -> None:
        """Bind at once and serve on daemon threads.

        Args:
            token: The job's shared secret (the service derives its key from it).
            host: Bind address (the master's control address).
            port: Bind port; 0 picks a free one (a resumed master passes the old one).
            state: The contents to serve (default: empty).
        """
        self.state = state if state is not None else StoreState()
        self._dedup: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._dedup_lock = threading.Lock()
        self._server = ControlServer(store_key(token), self._handle, host=host, port=port)
        self.host = host
        self.port: int = self._server.port

    def _handle(self, channel: Channel, role: str) -> None:
        while True:
            request = channel.recv()
            if request["type"] != "store":
                raise ProtocolError(f"store: unexpected message type {request['type']!r}")
            client, rid = request.get("client"), request.get("id")
            if not isinstance(client, str) or not isinstance(rid, int):
                channel.send({"type": "store_reply", "id": rid, "ok": False, "error": "bad_request"})
                continue
            with self._dedup_lock:
                cached = self._dedup.get(client)
            if cached is not None and cached[0] == rid:
                reply = cached[1]
            else:
                reply = {"type": "store_reply", "id": rid, **execute(self.state, request)}
                if not reply["ok"] and reply["error"] == "bad_request":
                    logger.warning("store: rejected a request from %s: %s", channel.peer, reply["message"])
                with self._dedup_lock:
                    self._dedup[client] = (rid, reply)
                    self._dedup.move_to_end(client)
                    while len(self._dedup) > _DEDUP_CLIENTS:
                        self._dedup.popitem(last=False)
            channel.send(reply)

    def close(self) -> None:
        """Stop accepting connections; never raises, idempotent."""
        self._server.close()


def start_store_service(token: bytes, host: str, port: int = 0) -> StoreService:
    """Start the master's store service.

    Args:
        token: The job's shared secret.
        host: Bind address (the control server's).
        port: Bind port; 0 picks a free one.

    Returns:
        The running service (``.port``, ``.close()``).
    """
    return StoreService(token, host, port)
