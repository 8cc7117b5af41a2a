"""The job's rendezvous store, served by the master over the authenticated control protocol.

Workers use it for ``init_process_group``/``new_group`` (through ``PrefixStore``) and for the elastic
records (``ctl/gen<G>/state/...``, planner inputs). :class:`StoreClient` is a ``torch.distributed.Store``
implemented in Python; every operation is one MAC'd JSON request and reply
(``oobleck.runtime.control.protocol``), values travel base64-encoded.

Why a Python store over the HMAC channel, not a loopback ``TCPStore`` plus a tunnel:
- ``TCPStore`` has no authentication at all; bound to loopback it is still open to every local
  user, and remote workers would need a tunnel (ssh, stunnel) that oobleck does not manage.
  Here the only listener is a :class:`ControlServer`, which admits a connection only after a mutual
  HMAC challenge, MACs and sequence-numbers every frame and caps its size.
- Store traffic is small (a few hundred keys per generation, gloo's pair addresses and our records),
  so a Python round trip (~0.2 ms on loopback) is not on any step's critical path: steps never
  touch the store.
- torch 2.13 accepts a Python ``dist.Store`` subclass for ``init_process_group`` and ``new_group``
  through ``PrefixStore`` (tested on two gloo processes in
  ``tests/integration/test_store_security.py``); gloo calls ``set``, ``get`` and ``wait``.
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
  ``add`` is not applied twice by the same server. :meth:`StoreClient.abandon` (a failure notice)
  makes every pending and later operation fail at once instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from oobleck.runtime.control.protocol import Channel, ProtocolError, connect
from oobleck.runtime.control.server import ControlServer
from oobleck.runtime.control.store_state import StoreLimitError, StoreState

logger = logging.getLogger(__name__)

STORE_KEY_ENV = "OOBLECK_STORE_KEY"
"""Environment variable holding the store key (hex) of a worker; never the job token."""

MAX_WAIT_S = 1800.0
"""Longest any single blocking store operation may hold a server thread."""

REPLY_MARGIN_S = 10.0
"""Extra time a client waits for a reply beyond the operation's own timeout (network, scheduling)."""

RECONNECT_S = 60.0
"""Default longest a client keeps reconnecting to a vanished server before the operation fails."""

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


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(text: Any) -> bytes:
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
            state.set(_key(request), _unb64(request.get("value")))
            return {"ok": True}
        if op == "get":
            return {"ok": True, "value": _b64(state.get(_key(request), _timeout(request.get("timeout_s"))))}
        if op == "add":
            amount = request.get("amount")
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise ValueError("amount must be an integer")
            return {"ok": True, "value": state.add(_key(request), amount)}
        if op == "compare_set":
            expected, desired = _unb64(request.get("expected")), _unb64(request.get("desired"))
            return {"ok": True, "value": _b64(state.compare_set(_key(request), expected, desired))}
        if op == "wait":
            state.wait(_keys(request.get("keys")), _timeout(request.get("timeout_s")))
            return {"ok": True}
        if op == "get_present":
            found = state.get_present(_keys(request.get("keys")), _timeout(request.get("timeout_s")))
            return {"ok": True, "value": {k: _b64(v) for k, v in found.items()}}
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


class StoreClosedError(dist.DistStoreError):
    """The client was abandoned (a failure notice) or could not reach the service in time."""


class StoreClient(dist.Store):
    """A ``torch.distributed.Store`` whose operations are requests to a :class:`StoreService`.

    Thread-safe (one request at a time per client). Timeouts raise ``dist.DistStoreError`` as
    ``TCPStore`` does, so torch and the engine treat them alike.
    """

    def __init__(
        self,
        host: str,
        port: int,
        key: bytes,
        *,
        timeout: timedelta = timedelta(seconds=300),
        reconnect_s: float = RECONNECT_S,
        connect_s: float | None = None,
    ) -> None:
        """Connect and authenticate at once.

        Args:
            host: The master's address.
            port: The store service's port.
            key: :func:`store_key` of the job token.
            timeout: Default timeout of blocking operations (``get``, ``wait``).
            reconnect_s: Longest to keep reconnecting after the connection breaks.
            connect_s: Longest to keep trying the first connection (default ``reconnect_s``); a
                standby client made at a step boundary tries briefly, so a master that is down
                cannot stall training.

        Raises:
            StoreClosedError: The service cannot be reached within ``reconnect_s``.
            AuthenticationError: The key is wrong.
        """
        super().__init__()
        self._default_timeout = timeout
        self.set_timeout(timeout)
        self._addr = (host, port)
        self._secret = key
        self._reconnect_s = reconnect_s
        self._client = secrets.token_hex(8)
        self._next_id = 0
        self._lock = threading.Lock()
        self._abandoned = threading.Event()
        self._channel: Channel | None = None
        with self._lock:
            self._channel = self._reconnect(reconnect_s if connect_s is None else connect_s)

    # ------------------------------------------------------------------ transport
    def _reconnect(self, within_s: float | None = None) -> Channel:
        within_s = self._reconnect_s if within_s is None else within_s
        deadline, delay = time.monotonic() + within_s, 0.05
        while True:
            if self._abandoned.is_set():
                raise StoreClosedError("store client abandoned")
            try:
                return connect(*self._addr, self._secret, "worker")
            except ProtocolError:
                raise
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreClosedError(
                        f"store at {self._addr[0]}:{self._addr[1]} unreachable for {within_s} s: {exc}"
                    ) from exc
                logger.warning("store unreachable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _request(self, op: str, wait_s: float = 0.0, **fields: Any) -> Any:
        with self._lock:
            self._next_id += 1
            request = {"type": "store", "op": op, "client": self._client, "id": self._next_id, **fields}
            while True:
                if self._abandoned.is_set():
                    raise StoreClosedError("store client abandoned")
                channel = self._channel
                try:
                    if channel is None:
                        raise ConnectionError("not connected")
                    channel.send(request)
                    reply = channel.recv(wait_s + REPLY_MARGIN_S)
                    break
                except TimeoutError as exc:
                    raise dist.DistStoreError(
                        f"store {op}: no reply within {wait_s + REPLY_MARGIN_S} s"
                    ) from exc
                except ProtocolError:
                    raise
                except (ConnectionError, OSError, ValueError) as exc:
                    # NOTE: ValueError: select() on a socket that abandon() closed under us.
                    if channel is not None:
                        channel.close()
                    self._channel = None
                    if self._abandoned.is_set():
                        raise StoreClosedError("store client abandoned") from exc
                    logger.warning("store connection lost (%s); reconnecting", exc)
                    self._channel = self._reconnect()
        if reply.get("id") != request["id"]:
            raise ProtocolError(f"store reply id {reply.get('id')} for request {request['id']}")
        if not reply.get("ok"):
            message = f"store {op}: {reply.get('error')}: {reply.get('message', '')}"
            raise dist.DistStoreError(message)
        return reply.get("value")

    def _wait_s(self, timeout: timedelta | None) -> float:
        return min(MAX_WAIT_S, (self._default_timeout if timeout is None else timeout).total_seconds())

    def abandon(self) -> None:
        """Fail every pending and later operation now (a failure notice); never raises, idempotent."""
        self._abandoned.set()
        channel = self._channel
        if channel is not None:
            channel.close()

    close = abandon

    def set_timeout(self, timeout: timedelta) -> None:
        """Set the default timeout of ``get`` and ``wait`` (torch calls it on process-group init)."""
        super().set_timeout(timeout)
        self._default_timeout = timeout

    # ------------------------------------------------------------------ dist.Store
    def set(self, key: str, value: bytes | str) -> None:
        """Set ``key`` to ``value`` (bytes, or str encoded as UTF-8)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._request("set", key=key, value=_b64(data))

    def get(self, key: str) -> bytes:
        """The value of ``key``, waiting up to the store's timeout for it to be set."""
        wait_s = self._wait_s(None)
        return _unb64(self._request("get", wait_s, key=key, timeout_s=wait_s))

    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the integer at ``key`` (0 if unset); returns the new value."""
        return int(self._request("add", key=key, amount=int(amount)))

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        """Set ``key`` to ``desired`` if it holds ``expected`` (or is unset and ``expected`` is empty).

        Returns:
            The value after the operation (``desired`` when it was applied).
        """
        exp = expected.encode() if isinstance(expected, str) else bytes(expected)
        des = desired.encode() if isinstance(desired, str) else bytes(desired)
        return _unb64(self._request("compare_set", key=key, expected=_b64(exp), desired=_b64(des)))

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        """Wait until every key is set (up to ``timeout`` or the store's timeout)."""
        wait_s = self._wait_s(timeout)
        self._request("wait", wait_s, keys=list(keys), timeout_s=wait_s)

    def get_present(self, keys: list[str], timeout_s: float) -> dict[str, bytes]:
        """The values of those of ``keys`` that are set, once all are or after ``timeout_s``.

        One round trip, woken by the last ``set`` on the server, instead of a client-side poll of
        ``check`` and ``get`` per key (the state barrier of a regroup reads every member's record).

        Returns:
            Key -> value for the keys that are set (all of them unless the wait timed out).
        """
        wait_s = min(MAX_WAIT_S, max(0.0, timeout_s))
        found = self._request("get_present", wait_s, keys=list(keys), timeout_s=wait_s)
        if not isinstance(found, dict):
            raise ProtocolError("store get_present: the reply is not a mapping")
        return {str(k): _unb64(v) for k, v in found.items()}

    def check(self, keys: list[str]) -> bool:
        """Whether every key is set (no wait)."""
        return bool(self._request("check", keys=list(keys)))

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return bool(self._request("delete_key", key=key))

    def num_keys(self) -> int:
        """How many keys the store holds."""
        return int(self._request("num_keys"))
