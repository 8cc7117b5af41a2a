"""Events the master's membership machine consumes and the decisions it returns (plain data).

Assumptions:
- Every field is already validated by the shell (``control/messages.py``): a node id is an int,
  slots are positive; the machine trusts these types and checks only membership rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from oobleck.runtime.control.membership import Membership


class LossCause(enum.StrEnum):
    """Why a node was declared lost (each node is lost at most once per job)."""

    DISCONNECT = "disconnect"
    SILENCE = "silence"
    WORKER_EXIT = "worker_exit"
    MISSING = "missing"
    """A peer's generation barrier waited past its bound for this node."""
    NOT_RESUMED = "not_resumed"
    """It did not re-register with a resumed master within the grace period."""


# ---------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Register:
    """An authenticated agent asks for a node id (``conn`` names its connection until it has one)."""

    conn: int
    index: int | None
    host: str
    pid: int
    slots: int
    resumed: Membership | None = None
    """The newest generation this agent's workers run (set when it re-registers after a master loss)."""
    done: bool = False
    """Every worker of the re-registering agent already finished."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Any sign of life from a registered node (every message counts as one)."""

    node: int


@dataclass(frozen=True, slots=True)
class Workers:
    """The node started its workers (pids for agents.json)."""

    node: int
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ready:
    """Every worker of the node built its engine and waits for a membership."""

    node: int


@dataclass(frozen=True, slots=True)
class Done:
    """Every worker of the node finished the job."""

    node: int


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker of the node exited; non-zero ends the node."""

    node: int
    code: int
    local_rank: int = 0


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The node's connection broke or sent a bad frame."""

    node: int
    reason: str


@dataclass(frozen=True, slots=True)
class Regroup:
    """A worker of ``node`` asks for a new generation after ``generation`` failed for it.

    ``missing`` lists the nodes its generation barrier waited for past its bound; empty means an
    unexplained communication error (a fresh generation with the same members).
    """

    node: int
    generation: int
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Submit:
    """A job was accepted; it starts once ``expected_agents`` nodes are ready."""

    job: dict[str, Any]
    """The ``job`` control message (opaque here)."""
    expected_agents: int
    register_timeout_s: float
    hardware: str = "cpu"
    """The job's hardware entry: with ``gpus_per_node`` it fixes the slots agents must have."""
    gpus_per_node: int | None = None
    """The job's ``gpus_per_node`` override, or None (``control.devices.required_slots``)."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """This master was restarted on a run dir whose job was running (``--resume``)."""

    job: dict[str, Any] | None
    expected_agents: int
    adopted: Membership | None
    """The last generation the previous master announced (from metrics.jsonl), if any."""
    grace_s: float
    """How long members may take to re-register before they are declared lost."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the master's monitor wakes up)."""


@dataclass(frozen=True, slots=True)
class JobError:
    """Something outside the nodes failed the job (a run-dir write, an agent that never started)."""

    reason: str


Event = (
    Register
    | Heartbeat
    | Workers
    | Ready
    | Done
    | WorkerExit
    | Disconnect
    | Regroup
    | Submit
    | Resumed
    | Tick
    | JobError
)


# ---------------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class Welcome:
    """Accept connection ``conn`` as node ``node``."""

    conn: int
    node: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse connection ``conn`` with ``reason`` (send an error, then close)."""

    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to node ``node``."""

    node: int
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Announce:
    """Record ``membership`` (metrics.jsonl) and send it to its members."""

    membership: Membership


@dataclass(frozen=True, slots=True)
class Evict:
    """Node ``node`` is lost: tell it (it may be a hung node that wakes up) and close its connection."""

    node: int
    cause: LossCause
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The job ended (recorded once; the shell wakes whoever waits)."""

    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class AgentsChanged:
    """The agent table changed (the shell rewrites agents.json)."""


Decision = Welcome | Reject | Send | Announce | Evict | Finish | AgentsChanged
