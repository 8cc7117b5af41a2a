"""Agent messages to the master, checked field by field and turned into membership events.

Assumptions:
- The frame is already authenticated (``protocol``), but an authenticated peer can still send a
  wrong type (``slots: "abc"``) through a bug or a version skew; every field is checked here, and a
  bad one is a :class:`MessageError` the master answers with a logged rejection, never an
  exception escaping one of its threads.
"""

from __future__ import annotations

from typing import Any

from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_events import (
    Done,
    Event,
    Heartbeat,
    JobError,
    Ready,
    Register,
    Regroup,
    WorkerExit,
    Workers,
)

_MISSING = object()


class MessageError(ValueError):
    """A message from an authenticated peer has a missing or ill-typed field."""


MAX_JOB_ERROR_CHARS = 2000
"""Longest job-error text a node may put in the master's log and metrics."""


def _int(message: dict[str, Any], key: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
    value = message.get(key, default)
    if value is _MISSING:
        raise MessageError(f"'{message.get('type')}' message without '{key}'")
    if value is default and default is not _MISSING:
        return value
    # NOTE: bool is an int subclass in Python; True as a node id is a bug, not a value.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"'{message.get('type')}': {key}={value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise MessageError(f"'{message.get('type')}': {key}={value} must be >= {minimum}")
    return value


def _int_list(message: dict[str, Any], key: str) -> tuple[int, ...]:
    values = message.get(key, [])
    if not isinstance(values, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise MessageError(f"'{message.get('type')}': {key}={values!r} is not a list of integers")
    return tuple(values)


def parse_register(message: dict[str, Any], conn: int) -> Register:
    """Check a ``register`` message (a fresh agent, or one re-registering after a master loss).

    Args:
        message: The authenticated message.
        conn: The shell's id of the connection it came on.

    Returns:
        The :class:`Register` event.

    Raises:
        MessageError: A field is missing or ill-typed.
    """
    if message.get("type") != "register":
        raise MessageError(f"expected 'register', got {message.get('type')!r}")
    resumed, done = None, False
    if message.get("resume") is not None:
        resume = message["resume"]
        if not isinstance(resume, dict) or not isinstance(resume.get("membership"), dict):
            raise MessageError("'register': resume must be {membership: {...}, done: bool}")
        try:
            resumed = Membership.from_message(resume["membership"])
        except ValueError as exc:
            raise MessageError(f"'register': resume.{exc}") from None
        done = bool(resume.get("done", False))
    host = message.get("host", "?")
    if not isinstance(host, str):
        raise MessageError(f"'register': host={host!r} is not a string")
    return Register(
        conn=conn,
        index=_int(message, "index", None, minimum=0),
        host=host[:256],
        pid=_int(message, "pid", 0, minimum=0),
        slots=_int(message, "slots", 1, minimum=1),
        resumed=resumed,
        done=done,
    )


def parse_agent_message(node: int, message: dict[str, Any]) -> Event:
    """Check one message from registered node ``node`` and turn it into an event.

    Args:
        node: The sender's node id (from its registration, never from the message).
        message: The authenticated message.

    Returns:
        The event to feed the membership machine.

    Raises:
        MessageError: Unknown type, or a missing or ill-typed field.
    """
    kind = message["type"]
    if kind == "heartbeat":
        return Heartbeat(node)
    if kind == "workers":
        return Workers(node, _int_list(message, "pids"))
    if kind == "ready":
        return Ready(node)
    if kind == "done":
        return Done(node)
    if kind == "worker_exit":
        return WorkerExit(node, _int(message, "code", -1), _int(message, "local_rank", 0, minimum=0))
    if kind == "regroup":
        return Regroup(node, _int(message, "generation"), _int_list(message, "missing"))
    if kind == "job_error":
        # NOTE: a worker's job error (e.g. an unwritable checkpoint dir) fails the job once with its
        # cause; it is not the node's fault, so no node is declared lost for it.
        text = message.get("message")
        if not isinstance(text, str):
            raise MessageError("job_error: 'message' must be a string")
        return JobError(f"node {node}: {text[:MAX_JOB_ERROR_CHARS]}")
    raise MessageError(f"unexpected message type {kind!r} from an agent")
