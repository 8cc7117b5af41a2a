"""Records the workers exchange through the store, and the planner-inputs lease: pure checks, no I/O.

Keys (all under the job's store):
- ``ctl/gen<G>/state/<node>/<local>``: a worker's state record at generation G (:func:`state_record`).
- ``ctl/planner/claim``: who computes the planner inputs (:func:`claim_record`), a lease held by a
  member: a claim whose owner is no longer a member of the current generation is taken over.
- ``ctl/planner/inputs``: the profile and max_nodes every worker plans with (:func:`inputs_record`).

Assumptions:
- Only holders of the store key can write (the service authenticates every connection), so a
  record that fails these checks is a bug, a stale generation or a tampering key holder; it is
  rejected with a log line and treated as absent, never adopted.
- Nodes' workers fail together, so a claim owned by a member node is still being worked on (or the
  node will be declared lost and leave the membership, which frees the claim).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

logger = logging.getLogger(__name__)

CLAIM_KEY = "ctl/planner/claim"
INPUTS_KEY = "ctl/planner/inputs"


class RecordError(ValueError):
    """A record read from the store is malformed, stale or written under the wrong key."""


def state_key(generation: int, node: int, local_rank: int) -> str:
    """Where a worker publishes its state at ``generation``."""
    return f"ctl/gen{generation}/state/{node}/{local_rank}"


def state_record(
    *,
    generation: int,
    node: int,
    local_rank: int,
    plan: dict[str, Any] | None,
    step: int,
    last: dict[str, Any] | None,
) -> str:
    """Serialise a worker's state record (what it committed, where it is)."""
    return json.dumps(
        {
            "generation": generation,
            "node": node,
            "local": local_rank,
            "plan": plan,
            "step": step,
            "last": last,
        }
    )


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_state(raw: bytes, *, generation: int, node: int, local_rank: int) -> dict[str, Any]:
    """Validate a state record read from ``state_key(generation, node, local_rank)``.

    Returns:
        The record.

    Raises:
        RecordError: not JSON, wrong fields or types, another generation, node or rank.
    """
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict) or set(record) != {"generation", "node", "local", "plan", "step", "last"}:
        raise RecordError("not a state record (fields differ)")
    if (record["generation"], record["node"], record["local"]) != (generation, node, local_rank):
        raise RecordError(
            f"written for generation {record['generation']!r} node {record['node']!r}/{record['local']!r}, "
            f"read as generation {generation} node {node}/{local_rank}"
        )
    if not _int(record["step"]) or record["step"] < 0:
        raise RecordError(f"step {record['step']!r} is not an integer >= 0")
    if record["plan"] is not None and not isinstance(record["plan"], dict):
        raise RecordError("plan is neither null nor an object")
    last = record["last"]
    if last is not None and not (
        isinstance(last, dict)
        and _int(last.get("step"))
        and all(
            isinstance(last.get(k), int | float) and not isinstance(last.get(k), bool)
            for k in ("lr", "grad_norm")
        )
    ):
        raise RecordError("last is neither null nor a step result with step, lr and grad_norm")
    return record


def claim_record(node: int, local_rank: int, generation: int) -> str:
    """The claim value naming its owner."""
    return json.dumps({"node": node, "local": local_rank, "generation": generation})


ClaimVerdict = Literal["mine", "held", "take_over"]


def judge_claim(
    current: bytes, node: int, local_rank: int, members: Sequence[int]
) -> tuple[ClaimVerdict, int]:
    """Decide what to do about the planner claim after trying to take it.

    Args:
        current: The claim's value after ``compare_set(CLAIM_KEY, b"", mine)``.
        node: This worker's node.
        local_rank: This worker's local rank.
        members: Nodes of the current generation.

    Returns:
        The verdict and the owner's node (-1 when unreadable). ``mine``: this worker holds it
        (claimed now, or in an earlier generation and not yet published), compute the inputs;
        ``held``: another live member holds it, wait for the inputs; ``take_over``: the owner left
        the membership or the claim is unreadable, replace it.
    """
    try:
        owner = json.loads(current)
        owner_node, owner_local = owner["node"], owner["local"]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        logger.warning("planner claim %r is malformed; taking it over", current[:80])
        return "take_over", -1
    if not _int(owner_node) or not _int(owner_local):
        logger.warning("planner claim %r is malformed; taking it over", current[:80])
        return "take_over", -1
    if (owner_node, owner_local) == (node, local_rank):
        return "mine", owner_node
    if owner_node not in members:
        return "take_over", owner_node
    return "held", owner_node


def inputs_record(profile: dict[str, Any], max_nodes: int, node: int, generation: int) -> str:
    """Serialise the planner inputs with their writer."""
    return json.dumps({"profile": profile, "max_nodes": max_nodes, "node": node, "generation": generation})


def parse_inputs(raw: bytes, *, max_generation: int) -> dict[str, Any]:
    """Validate the planner inputs.

    Args:
        raw: The value of ``INPUTS_KEY``.
        max_generation: The reader's generation; inputs from a later one cannot exist yet.

    Raises:
        RecordError: malformed, or claims a generation from the future.
    """
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"planner inputs are not JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict) or set(record) != {"profile", "max_nodes", "node", "generation"}:
        raise RecordError("planner inputs: fields differ")
    if not isinstance(record["profile"], dict):
        raise RecordError("planner inputs: profile is not an object")
    if not _int(record["max_nodes"]) or record["max_nodes"] < 1:
        raise RecordError(f"planner inputs: max_nodes {record['max_nodes']!r} is not an integer >= 1")
    if not _int(record["node"]) or not _int(record["generation"]) or record["generation"] > max_generation:
        raise RecordError(f"planner inputs: writer {record['node']!r} at generation {record['generation']!r}")
    return record
