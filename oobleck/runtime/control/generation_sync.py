"""A generation's store rendezvous: the state barrier and the planner-inputs lease, each bounded.

Both waits end in a decision, never in another identical wait: a newer generation (return None),
the data (return it), or :class:`BarrierTimeoutError` naming the nodes that never delivered, which
the worker forwards to the master so it drops exactly those.

Assumptions:
- ``superseded()`` turns true as soon as the agent link delivers a newer generation; it is polled.
- Record checks live in :mod:`oobleck.runtime.control.store_records`; a rejected record is logged
  once and counts as not delivered.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.store_records import (
    CLAIM_KEY,
    INPUTS_KEY,
    RecordError,
    claim_record,
    judge_claim,
    parse_inputs,
    parse_state,
    state_key,
)

logger = logging.getLogger(__name__)

BARRIER_TIMEOUT_S = float(os.environ.get("OOBLECK_BARRIER_TIMEOUT_S", "120"))
"""Longest a generation's state barrier (and the wait for planner inputs) waits for a member the
master still believes alive; then the worker asks the master to drop the members that never
delivered. ``OOBLECK_BARRIER_TIMEOUT_S`` overrides it (tests)."""

_POLL_S = 0.01
"""Pause of a wait that cannot block in the store (a fallback store, a rejected record present)."""

_WAIT_SLICE_S = 0.05
"""Longest one blocking read of the barrier waits before re-checking ``superseded()``; the read
returns as soon as the last record is set (a server-side wait), so this is not a poll interval."""


def read_present(store: dist.Store, keys: list[str], wait_s: float) -> dict[str, bytes]:
    """The values of those of ``keys`` that are set, once all are or after about ``wait_s``.

    One round trip on oobleck's :class:`~oobleck.runtime.control.store_client.StoreClient`
    (``get_present``); any other ``dist.Store`` is polled with ``check`` and ``get`` per key.

    Args:
        store: The generation's store.
        keys: The keys to read.
        wait_s: Longest wait for the missing ones.

    Returns:
        Key -> value of the keys that are set.
    """
    get_present = getattr(store, "get_present", None)
    if callable(get_present):
        found: dict[str, bytes] = get_present(keys, wait_s)
        return found
    found = {key: store.get(key) for key in keys if store.check([key])}
    if len(found) < len(keys):
        time.sleep(min(_POLL_S, wait_s))
    return found


class BarrierTimeoutError(RuntimeError):
    """Some members delivered nothing valid within the barrier bound."""

    def __init__(self, generation: int, missing: list[int], what: str) -> None:
        """Name the generation, the missing nodes and what they did not deliver."""
        super().__init__(
            f"generation {generation}: nodes {missing} delivered no {what} within {BARRIER_TIMEOUT_S} s"
        )
        self.missing = missing


def publish_state(store: dist.Store, generation: int, *, node: int, local_rank: int, record: str) -> None:
    """Set this worker's state record for ``generation`` (``store_records.state_record``)."""
    store.set(state_key(generation, node, local_rank), record)


def unpublished(store: dist.Store, target: Membership) -> list[int]:
    """Members with a rank whose state record for ``target`` is not in the store now (one read).

    Names the nodes a rendezvous of the generation waited for in vain, for the master to drop.
    """
    keys = {state_key(target.generation, n, r): n for n in target.members for r in range(target.slots)}
    found = read_present(store, list(keys), 0.0)
    return sorted({node for key, node in keys.items() if key not in found})


def collect_states(
    store: dist.Store,
    target: Membership,
    *,
    node: int,
    superseded: Callable[[], bool],
) -> list[dict[str, Any]] | None:
    """Read every member rank's valid state record (the state barrier), after :func:`publish_state`.

    Args:
        store: This generation's store client.
        target: The generation being formed.
        node: This worker's node (names it in log lines).
        superseded: Whether a newer generation arrived (polled).

    Returns:
        One record per member rank (members in order, then local ranks), or None if superseded.

    Raises:
        BarrierTimeoutError: some members had no valid record within ``BARRIER_TIMEOUT_S``.
    """
    generation = target.generation
    pending = {state_key(generation, n, r): (n, r) for n in target.members for r in range(target.slots)}
    records: dict[tuple[int, int], dict[str, Any]] = {}
    rejected: dict[str, bytes] = {}
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while pending:
        if superseded():
            return None
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            missing = sorted({n for n, _ in pending.values()})
            raise BarrierTimeoutError(generation, missing, "valid state record")
        found = read_present(store, list(pending), min(_WAIT_SLICE_S, remaining_s))
        accepted = 0
        for key, raw in found.items():
            n, r = pending[key]
            try:
                records[(n, r)] = parse_state(raw, generation=generation, node=n, local_rank=r)
            except RecordError as exc:
                # NOTE: a rejected record stays pending (its writer may still overwrite it with a
                # valid one); if none comes, the node counts as missing. Logged once per value.
                if rejected.get(key) != raw:
                    logger.error("[node %d] rejected store record %s: %s", node, key, exc)
                    rejected[key] = raw
                continue
            del pending[key]
            accepted += 1
        if pending and not accepted and len(found) == len(pending):
            time.sleep(_POLL_S)  # NOTE: only rejected records are present: do not spin on them.
    return [records[(n, r)] for n in target.members for r in range(target.slots)]


def planner_inputs(
    store: dist.Store,
    target: Membership,
    *,
    node: int,
    local_rank: int,
    publish: Callable[[], None],
    superseded: Callable[[], bool],
) -> dict[str, Any] | None:
    """The planner inputs, published by whoever holds the planner claim (a lease on a member).

    The first worker to ``compare_set`` the claim publishes (``publish()``); the others wait. A
    claim whose owner node left the membership is taken over, so an owner that died between
    claiming and publishing cannot stall the job.

    Args:
        store: This generation's store client.
        target: The generation being formed.
        node: This worker's node.
        local_rank: This worker's local rank.
        publish: Computes and sets ``INPUTS_KEY`` (called only while this worker holds the claim).
        superseded: Whether a newer generation arrived (polled).

    Returns:
        The validated inputs record, or None if superseded.

    Raises:
        BarrierTimeoutError: the claim's live owner published nothing within the bound.
    """
    mine = claim_record(node, local_rank, target.generation)
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    rejected = b""
    while True:
        if store.check([INPUTS_KEY]):
            raw = store.get(INPUTS_KEY)
            try:
                return parse_inputs(raw, max_generation=target.generation)
            except RecordError as exc:
                if raw != rejected:
                    logger.error("[node %d] rejected the planner inputs: %s", node, exc)
                    rejected = raw
        current = store.compare_set(CLAIM_KEY, "", mine)
        verdict, owner = judge_claim(current, node, local_rank, target.members)
        if verdict == "mine":
            if not rejected:
                publish()
                continue
        elif verdict == "take_over":
            logger.warning("[node %d] planner claim %r has no live owner; taking it over", node, current)
            try:
                store.compare_set(CLAIM_KEY, current.decode(), mine)
            except UnicodeDecodeError:
                store.delete_key(CLAIM_KEY)
            continue  # NOTE: re-read: another survivor may have taken it over first.
        if superseded():
            return None
        if time.monotonic() > deadline:
            raise BarrierTimeoutError(target.generation, [owner], "planner inputs")
        time.sleep(_POLL_S * 2)
