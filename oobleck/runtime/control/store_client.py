"""The workers' side of the job's rendezvous store: a ``torch.distributed.Store`` over the control protocol.

Every operation is one MAC'd JSON request to the master's
:class:`~oobleck.runtime.control.store.StoreService` and its reply; see that module for why the store
is not a ``TCPStore``. torch 2.13 accepts a Python ``dist.Store`` subclass for ``init_process_group``
and ``new_group`` through ``PrefixStore`` (tested on two gloo processes in
``tests/integration/test_store_security.py``); gloo calls ``set``, ``get`` and ``wait``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from oobleck.runtime.control.protocol import Channel, ProtocolError, connect
from oobleck.runtime.control.store import MAX_WAIT_S, decode_value, encode_value

logger = logging.getLogger(__name__)

REPLY_MARGIN_S = 10.0
"""Extra time a client waits for a reply beyond the operation's own timeout (network, scheduling)."""

RECONNECT_S = 60.0
"""Default longest a client keeps reconnecting to a vanished server before the operation fails."""


class StoreClosedError(dist.DistStoreError):
    """The client was abandoned (a failure notice) or could not reach the service in time."""


class StoreClient(dist.Store):
    """A ``torch.distributed.Store`` whose operations are requests to the master's store service.

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
            key: :func:`~oobleck.runtime.control.store.store_key` of the job token.
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
        self._waited: dict[str, bytes] = {}
        """The values the last request (a ``wait``) returned, for a ``get`` that follows it at once."""
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
            self._waited = {}
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
        self._request("set", key=key, value=encode_value(data))

    def get(self, key: str) -> bytes:
        """The value of ``key``, waiting up to the store's timeout for it to be set.

        Right after a ``wait`` for ``key`` (gloo's rendezvous reads every peer's address so), the
        value that wait fetched, without a round trip: as if this get had been served together with
        the wait, before anything else this client did (any other request forgets those values).
        """
        with self._lock:
            waited, self._waited = self._waited, {}
        if key in waited:
            return waited[key]
        wait_s = self._wait_s(None)
        return decode_value(self._request("get", wait_s, key=key, timeout_s=wait_s))

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
        reply = self._request("compare_set", key=key, expected=encode_value(exp), desired=encode_value(des))
        return decode_value(reply)

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        """Wait until every key is set (up to ``timeout`` or the store's timeout).

        One round trip that also brings the values back, so the ``get`` of a waited key that
        follows needs none: a gloo rendezvous of n ranks waits for and then gets every rank's
        address, n of its 2n + 1 round trips, all on the critical path of a recovery.

        Raises:
            DistStoreError: some key was not set within the timeout.
        """
        wait_s = self._wait_s(timeout)
        found = self.get_present(list(keys), wait_s)
        missing = [key for key in keys if key not in found]
        if missing:
            raise dist.DistStoreError(
                f"store wait: timeout: keys {missing[:4]} not set within {wait_s:.1f} s"
            )
        with self._lock:
            self._waited = found

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
        return {str(k): decode_value(v) for k, v in found.items()}

    def check(self, keys: list[str]) -> bool:
        """Whether every key is set (no wait)."""
        return bool(self._request("check", keys=list(keys)))

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return bool(self._request("delete_key", key=key))

    def num_keys(self) -> int:
        """How many keys the store holds."""
        return int(self._request("num_keys"))
