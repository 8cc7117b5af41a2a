"""The worker's end of the agent link: membership notices in, requests out.

Assumptions:
- The agent passes one end of a socketpair (``OOBLECK_CONTROL=fd:N``) and its MAC key
  (``OOBLECK_CONTROL_KEY``); nothing else may write to it.
- Notices are handled on a reader thread, so a failure notice reaches the engine (``on_failure``
  aborts its process groups) even while the training thread is blocked inside a collective.
- Generations only grow; a notice older than the newest seen is ignored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from oobleck.runtime.control.agent import CONTROL_ENV, CONTROL_KEY_ENV
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.protocol import Channel, ProtocolError

logger = logging.getLogger(__name__)


class WorkerLink:
    """Receives memberships from the agent; wakes waiters; calls ``on_failure`` at once on a loss."""

    def __init__(self, channel: Channel, on_failure: Callable[[Membership], None] | None = None) -> None:
        """Start the reader thread.

        Args:
            channel: The authenticated socketpair channel to the agent.
            on_failure: Called on the reader thread for every notice that removes nodes.
        """
        self._channel = channel
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self.latest: Membership | None = None
        self.received_at: dict[int, float] = {}
        self.closed = False
        threading.Thread(target=self._read, name="agent-link", daemon=True).start()

    @classmethod
    def from_env(cls, on_failure: Callable[[Membership], None] | None = None) -> WorkerLink:
        """Open the link the agent set up in this process's environment.

        Raises:
            RuntimeError: ``OOBLECK_CONTROL`` is missing or not ``fd:N``.
        """
        spec, key = os.environ.get(CONTROL_ENV, ""), os.environ.get(CONTROL_KEY_ENV, "")
        if not spec.startswith("fd:") or not spec[3:].isdigit() or not key:
            raise RuntimeError(
                f"{CONTROL_ENV}={spec!r}: expected fd:N with {CONTROL_KEY_ENV} set (run by an agent)"
            )
        sock = socket.socket(fileno=int(spec[3:]))
        return cls(Channel(sock, bytes.fromhex(key), is_server=False, peer="agent"), on_failure)

    def _read(self) -> None:
        while True:
            try:
                message = self._channel.recv()
            except (ConnectionError, OSError) as exc:
                if not self._channel.closed and isinstance(exc, ProtocolError):
                    logger.error("agent link broken: %s", exc)
                break
            if message["type"] != "membership":
                continue
            membership = Membership.from_message(message)
            if self.latest is not None and membership.generation <= self.latest.generation:
                continue
            received = time.time()
            # NOTE: abort *before* publishing the generation, so the training thread can never
            # build the new generation's groups first and then have them destroyed by this abort.
            if membership.lost and self._on_failure is not None:
                self._on_failure(membership)
            with self._cond:
                self.latest = membership
                self.received_at[membership.generation] = received
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_newer(self, generation: int, timeout_s: float | None) -> Membership | None:
        """Wait for a membership newer than ``generation``.

        Args:
            generation: The newest generation the caller already acted on (-1 for none).
            timeout_s: Longest wait; None waits until the link closes.

        Returns:
            The newest membership, or None on timeout or a closed link.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self.latest is None or self.latest.generation <= generation:
                if self.closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self.latest

    def send_ready(self) -> None:
        """Tell the agent this worker is built and waits for a membership (joins wait for this)."""
        self._channel.send({"type": "ready"})

    def request_regroup(self, generation: int, missing: Sequence[int] = ()) -> None:
        """Ask the master for a fresh generation after ``generation`` failed here.

        Args:
            generation: The generation that failed.
            missing: Members that never reached its barrier within the bound: the master drops
                them. Empty after an unexplained error: the same members regroup.
        """
        try:
            self._channel.send({"type": "regroup", "generation": generation, "missing": sorted(missing)})
        except (OSError, ProtocolError) as exc:
            logger.warning("could not request a regroup: %s", exc)

    def report_job_error(self, message: str) -> None:
        """Tell the master the job cannot go on for a reason no node caused (e.g. an unwritable
        checkpoint dir): it fails the job once with ``message`` instead of counting node losses."""
        try:
            self._channel.send({"type": "job_error", "message": message[:2000]})
        except (OSError, ProtocolError) as exc:
            logger.warning("could not report a job error: %s", exc)

    def close(self) -> None:
        """Close the link; never raises, idempotent."""
        self._channel.close()
