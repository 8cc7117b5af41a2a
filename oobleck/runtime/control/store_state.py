"""The contents of the rendezvous store: a bounded, thread-safe key-value map with blocking waits.

Pure state, no sockets: :mod:`oobleck.runtime.control.store` serves it over the control protocol.
Semantics follow ``TCPStore``: ``add`` on an unset key starts at 0 and stores the decimal text;
``compare_set`` on an unset key applies only when ``expected`` is empty and otherwise returns
``expected``; ``get``/``wait`` block until the keys exist or the timeout passes.

Assumptions:
- One job's rendezvous traffic: gloo pair addresses and the elastic records, a few hundred keys
  per generation. The caps below are far above that and far below what would hurt the master.
"""

from __future__ import annotations

import contextlib
import threading
import time

MAX_KEYS = 100_000
"""Most keys the store holds; a ``set`` of a new key beyond it fails."""
MAX_KEY_BYTES = 1024
"""Longest key (UTF-8 bytes)."""
MAX_VALUE_BYTES = 512 * 1024
"""Largest value; base64 of it still fits one control frame (1 MiB)."""
MAX_TOTAL_BYTES = 256 * 1024 * 1024
"""Most bytes of keys and values held together."""


class StoreLimitError(ValueError):
    """An operation would exceed one of the store's size caps."""


class StoreState:
    """Thread-safe key-value state; every method may be called from any server thread."""

    def __init__(
        self,
        *,
        max_keys: int = MAX_KEYS,
        max_value_bytes: int = MAX_VALUE_BYTES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        """An empty store with the given caps."""
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._total_bytes = 0
        self.max_keys, self.max_value_bytes, self.max_total_bytes = max_keys, max_value_bytes, max_total_bytes

    def _put(self, key: str, value: bytes) -> None:
        """Store under the lock, after the caps are checked."""
        key_bytes = len(key.encode())
        if key_bytes > MAX_KEY_BYTES:
            raise StoreLimitError(f"key of {key_bytes} bytes exceeds {MAX_KEY_BYTES}")
        if len(value) > self.max_value_bytes:
            raise StoreLimitError(f"value of {len(value)} bytes exceeds {self.max_value_bytes}")
        old = self._data.get(key)
        if old is None and len(self._data) >= self.max_keys:
            raise StoreLimitError(f"store holds {self.max_keys} keys already")
        total = (
            self._total_bytes
            + len(value)
            - (0 if old is None else len(old))
            + (key_bytes if old is None else 0)
        )
        if total > self.max_total_bytes:
            raise StoreLimitError(f"store would hold {total} bytes, over {self.max_total_bytes}")
        self._data[key] = value
        self._total_bytes = total
        self._cond.notify_all()

    def set(self, key: str, value: bytes) -> None:
        """Set ``key``; wakes every waiter."""
        with self._cond:
            self._put(key, value)

    def get(self, key: str, timeout_s: float) -> bytes:
        """The value of ``key``, waiting up to ``timeout_s`` for it.

        Raises:
            TimeoutError: ``key`` was not set in time.
        """
        with self._cond:
            self._wait_locked([key], timeout_s)
            return self._data[key]

    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the integer at ``key`` (0 when unset); returns the new value.

        Raises:
            ValueError: the key holds something that is not an integer.
        """
        with self._cond:
            raw = self._data.get(key, b"0")
            try:
                value = int(raw.decode()) + amount
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"key {key!r} does not hold an integer") from None
            self._put(key, str(value).encode())
            return value

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        """Set ``key`` to ``desired`` if it holds ``expected`` (unset counts as ``b""``).

        Returns:
            The value after the call: ``desired`` if applied, else the current value (``expected``
            when the key is unset, as ``TCPStore`` does).
        """
        with self._cond:
            current = self._data.get(key)
            if current is None:
                if expected:
                    return expected
                self._put(key, desired)
                return desired
            if current == expected:
                self._put(key, desired)
                return desired
            return current

    def wait(self, keys: list[str], timeout_s: float) -> None:
        """Wait until every key is set.

        Raises:
            TimeoutError: some key was not set within ``timeout_s``.
        """
        with self._cond:
            self._wait_locked(keys, timeout_s)

    def _wait_locked(self, keys: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(k in self._data for k in keys):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [k for k in keys if k not in self._data]
                raise TimeoutError(f"keys {missing[:4]} not set within {timeout_s:.1f} s")
            self._cond.wait(remaining)

    def get_present(self, keys: list[str], timeout_s: float) -> dict[str, bytes]:
        """The values of those of ``keys`` that are set, once all are or after ``timeout_s``.

        One call replaces a poll of ``check`` + ``get`` per key (a barrier reading every member's
        record): it returns as soon as the last key is set, or with what is there at the timeout.
        """
        with self._cond:
            with contextlib.suppress(TimeoutError):
                self._wait_locked(keys, timeout_s)
            return {k: self._data[k] for k in keys if k in self._data}

    def check(self, keys: list[str]) -> bool:
        """Whether every key is set."""
        with self._cond:
            return all(k in self._data for k in keys)

    def delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        with self._cond:
            value = self._data.pop(key, None)
            if value is None:
                return False
            self._total_bytes -= len(value) + len(key.encode())
            return True

    def num_keys(self) -> int:
        """How many keys are set."""
        with self._cond:
            return len(self._data)
