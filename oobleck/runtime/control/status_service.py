"""``oobleck status`` from the files of a run dir or live from a master: build, serve and fetch a view.

Conversation (role ``status`` on the authenticated control channel, the same token proof as every
agent and submitter; see ``protocol.py``)::

    client -> master  {"type": "status"}
    master -> client  {"type": "status", "status": StatusView.to_message()}
                      or {"type": "error", "message": "..."} for a malformed request

Assumptions:
- The master answers from its own node table (fresher than agents.json) and the job dir's files
  the reporter writes (plan.json, metrics.jsonl); it reads them outside its lock, so a status
  request never delays membership decisions.
- Both ends validate: the master checks the request, the client checks the reply field by field
  (:meth:`StatusView.from_message`) before rendering anything.
- A half-written or missing file shows as "unknown", never as an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from oobleck.runtime.control.progress import read_records, summarize
from oobleck.runtime.control.protocol import (
    HANDSHAKE_TIMEOUT_S,
    AuthenticationError,
    Channel,
    ConnectionClosedError,
    ProtocolError,
    connect,
)
from oobleck.runtime.control.status_view import (
    RECOVERIES_SHOWN,
    NodeRow,
    PlanRow,
    RecoveryRow,
    StatusError,
    StatusView,
)

STATUS_ROLE = "status"
"""The handshake role of a status client (the master dispatches on it)."""

REPLY_TIMEOUT_S = 30.0
"""Longest a client waits for the master's reply (it reads a few small files)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _nodes_from_file(job_dir: Path) -> tuple[NodeRow, ...] | None:
    rows = _read_json(job_dir / "agents.json")
    if not isinstance(rows, list):
        return None
    try:
        return tuple(NodeRow.from_message(row, f"agents.json[{i}].") for i, row in enumerate(rows))
    except StatusError:
        return None


def _plan_from_file(job_dir: Path) -> PlanRow | None:
    record = _read_json(job_dir / "plan.json")
    # NOTE: a torchrun worker's plan.json is a bare Plan.to_dict(), with no generation or node layout.
    if not isinstance(record, dict) or "generation" not in record:
        return None
    try:
        return PlanRow.from_message(record, "plan.json ")
    except StatusError:
        return None


def read_view(
    job_dir: Path, total_steps: int, nodes: Sequence[NodeRow] | None = None, state: str | None = None
) -> StatusView:
    """The status of the job whose files are in ``job_dir``.

    Args:
        job_dir: The job's run dir (a one-shot master's, or a daemon's ``jobs/<id>/``).
        total_steps: The job's ``steps`` (0 when unknown).
        nodes: The master's node table; None reads ``agents.json``.
        state: What the master knows of the job (e.g. none submitted yet); None reads the outcome
            rows of ``metrics.jsonl`` (``running`` until there is one).

    Returns:
        The view; files that are missing or half-written show as unknown.
    """
    records = read_records(job_dir / "metrics.jsonl")
    plan = _plan_from_file(job_dir)
    progress = summarize(records, total_steps, len(plan.pipelines) if plan is not None else None)
    ended = [r for r in records if str(r.get("event", "")).startswith("job_")]
    if state is None:
        state = f"{str(ended[-1]['event'])[4:]} ({ended[-1].get('reason', '')})" if ended else "running"
    recoveries = []
    for row in [r for r in records if r.get("event") == "recovery"][-RECOVERIES_SHOWN:]:
        try:
            recoveries.append(RecoveryRow.from_message(row, "metrics.jsonl recovery "))
        except StatusError:
            continue
    return StatusView(
        run_dir=str(job_dir),
        state=state,
        progress=progress,
        nodes=tuple(nodes) if nodes is not None else _nodes_from_file(job_dir),
        plan=plan,
        recoveries=tuple(recoveries),
    )


def check_request(message: dict[str, Any]) -> None:
    """Validate a status request: ``{"type": "status"}`` and nothing else.

    Raises:
        StatusError: Another type, or unknown keys.
    """
    if message.get("type") != "status":
        raise StatusError(f"status: expected a 'status' request, got {message.get('type')!r:.40}")
    extra = sorted(set(message) - {"type"})
    if extra:
        raise StatusError(f"status: unknown request keys {extra[:5]}")


def serve_status(channel: Channel, view_of: Callable[[], StatusView]) -> None:
    """Answer one status request on the master (called on the connection's handler thread).

    Args:
        channel: The authenticated client.
        view_of: Builds the current view (the master's :meth:`status_view`).
    """
    message = channel.recv(HANDSHAKE_TIMEOUT_S)
    try:
        check_request(message)
    except StatusError as exc:
        channel.send({"type": "error", "message": str(exc)})
        return
    # NOTE: round-tripped here too, so a master never sends a view its own clients would refuse.
    view = StatusView.from_message(view_of().to_message())
    channel.send({"type": "status", "status": view.to_message()})


def fetch_status(host: str, port: int, token: bytes) -> StatusView:
    """Ask a running master for its job's status (the client side of :func:`serve_status`).

    Args:
        host: Master address.
        port: Master control port.
        token: The master's token.

    Returns:
        The validated view.

    Raises:
        StatusError: Wrong token, master unreachable, or a reply that fails validation; the
            message is one line naming ``HOST:PORT``.
    """
    where = f"{host}:{port}"
    try:
        channel = connect(host, port, token, STATUS_ROLE)
    except AuthenticationError:
        raise StatusError(
            f"the master at {where} refused the token; pass its token with --token-file "
            "(a one-shot master's is <run-dir>/token) or set OOBLECK_TOKEN"
        ) from None
    except (OSError, ProtocolError) as exc:
        raise StatusError(f"cannot reach the master at {where} ({exc}); is it running there?") from None
    try:
        channel.send({"type": "status"})
        reply = channel.recv(REPLY_TIMEOUT_S)
    except (TimeoutError, ConnectionClosedError, ProtocolError, OSError) as exc:
        raise StatusError(f"the master at {where} gave no status ({exc.__class__.__name__}: {exc})") from None
    finally:
        channel.close()
    if reply.get("type") == "error":
        raise StatusError(f"the master at {where} refused the request: {str(reply.get('message'))[:200]}")
    if reply.get("type") != "status":
        raise StatusError(f"the master at {where} sent {reply.get('type')!r:.40} instead of a status")
    try:
        return StatusView.from_message(reply.get("status"))
    except StatusError as exc:
        raise StatusError(f"the master at {where} sent an invalid status: {exc}") from None
