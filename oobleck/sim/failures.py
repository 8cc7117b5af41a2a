"""Failure models: one seeded, validated membership trace that every policy replays.

A :class:`FailureTrace` is generated (or read) once per run and fed unchanged to every policy, so
policies see *common random numbers*: differences between them are the policies, not luck.

Assumptions:
    * Node ids are the integers ``0 .. num_nodes-1``; a trace names node ``k`` as ``node<k>``.
    * All nodes are up at time 0, unless a replayed trace adds nodes at time 0: then exactly those
      nodes are up at time 0 (the published Oobleck/Bamboo traces open with such ``add`` lines).
    * Failures are fail-stop and memoryless: a node fails at a constant rate while it is up
      (Poisson), racks fail as a unit at their own rate, repairs take a fixed or exponential time.
    * Events that share a timestamp are one cluster event (a rack failure is one simultaneous loss).
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from oobleck.errors import ConfigError

SECONDS_PER_HOUR = 3600.0

NodeEventKind = Literal["add", "remove"]
RepairDistribution = Literal["fixed", "exponential"]

_NODE_NAME = re.compile(r"node(\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEvent:
    """One membership change of one node."""

    time_s: float
    """Simulated seconds since the start of the job."""
    kind: NodeEventKind
    """``"remove"``: the node failed or was preempted; ``"add"``: it came (back) up."""
    node: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterEvent:
    """All node events that happen at one instant, applied at once."""

    time_s: float
    lost: tuple[int, ...]
    """Nodes that went down, sorted."""
    joined: tuple[int, ...]
    """Nodes that came up, sorted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureTrace:
    """A validated, time-ordered membership history of a cluster of ``num_nodes`` nodes."""

    num_nodes: int
    initial_nodes: tuple[int, ...]
    """Nodes up at time 0, sorted."""
    events: tuple[ClusterEvent, ...]
    """Membership changes after time 0, strictly increasing in time."""

    @property
    def num_failures(self) -> int:
        """Node losses in the whole trace (a rack failure counts each node)."""
        return sum(len(event.lost) for event in self.events)

    def until(self, horizon_s: float) -> FailureTrace:
        """The same trace cut at ``horizon_s`` (events at or after it dropped)."""
        kept = tuple(event for event in self.events if event.time_s < horizon_s)
        return FailureTrace(num_nodes=self.num_nodes, initial_nodes=self.initial_nodes, events=kept)


def build_trace(
    num_nodes: int, node_events: Iterable[NodeEvent], *, source: str = "trace", lines: Iterable[int] = ()
) -> FailureTrace:
    """Validate node events against cluster membership and group them into cluster events.

    Args:
        num_nodes: Cluster size; valid ids are ``0 .. num_nodes-1``.
        node_events: Events in non-decreasing time order.
        source: Name used in error messages (a file name for replayed traces).
        lines: Source line number of each event, for ``file:line`` errors (optional).

    Returns:
        The trace; time-0 ``add`` events define the initial membership when present.

    Raises:
        ConfigError: an event names a node outside the cluster, removes a node that is down,
            adds a node that is up, or goes back in time.
    """
    events = list(node_events)
    line_numbers = list(lines) or list(range(1, len(events) + 1))
    initial_adds = [event.node for event in events if event.time_s == 0 and event.kind == "add"]
    up = set(initial_adds) if initial_adds else set(range(num_nodes))
    initial = tuple(sorted(up))
    grouped: list[ClusterEvent] = []
    lost: list[int] = []
    joined: list[int] = []
    current = 0.0
    for event, line in zip(events, line_numbers, strict=True):
        where = f"{source}:{line}"
        if not 0 <= event.node < num_nodes:
            raise ConfigError(
                f"{where}: node{event.node} is outside the cluster of {num_nodes} nodes "
                f"(node0..node{num_nodes - 1}); raise --nodes or fix the trace"
            )
        if event.time_s < current:
            raise ConfigError(
                f"{where}: time {event.time_s * 1000:.0f} ms goes back in time (previous event at "
                f"{current * 1000:.0f} ms); sort the trace by time"
            )
        if event.time_s == 0 and event.kind == "add":
            continue
        if event.time_s > current and (lost or joined):
            grouped.append(
                ClusterEvent(time_s=current, lost=tuple(sorted(lost)), joined=tuple(sorted(joined)))
            )
            lost, joined = [], []
        current = event.time_s
        if event.kind == "remove":
            if event.node not in up:
                raise ConfigError(f"{where}: removes node{event.node}, which is not up at that time")
            up.discard(event.node)
            lost.append(event.node)
        else:
            if event.node in up:
                raise ConfigError(f"{where}: adds node{event.node}, which is already up at that time")
            up.add(event.node)
            joined.append(event.node)
    if lost or joined:
        grouped.append(ClusterEvent(time_s=current, lost=tuple(sorted(lost)), joined=tuple(sorted(joined))))
    return FailureTrace(num_nodes=num_nodes, initial_nodes=initial, events=tuple(grouped))


def read_trace(path: str | Path, num_nodes: int) -> FailureTrace:
    """Read a ``time_ms,add|remove,node<k>`` CSV trace (Oobleck/Bamboo simulator format).

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        ConfigError: missing file or a malformed/invalid line, naming ``path:line``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read trace ({error.strerror})") from None
    events: list[NodeEvent] = []
    lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        events.append(_parse_line(line, f"{path}:{number}"))
        lines.append(number)
    return build_trace(num_nodes, events, source=str(path), lines=lines)


def _parse_line(line: str, where: str) -> NodeEvent:
    expected = "expected 'time_ms,add|remove,node<k>', e.g. '3600000,remove,node3'"
    parts = [part.strip() for part in line.split(",")]
    if len(parts) != 3:
        raise ConfigError(f"{where}: {line!r} has {len(parts)} fields; {expected}")
    time_text, kind, name = parts
    try:
        time_ms = float(time_text)
    except ValueError:
        raise ConfigError(f"{where}: time {time_text!r} is not a number; {expected}") from None
    if not math.isfinite(time_ms) or time_ms < 0:
        raise ConfigError(f"{where}: time {time_text!r} must be a finite number >= 0; {expected}")
    if kind not in ("add", "remove"):
        raise ConfigError(f"{where}: event {kind!r} is neither 'add' nor 'remove'; {expected}")
    match = _NODE_NAME.fullmatch(name)
    if match is None:
        raise ConfigError(f"{where}: node {name!r} is not of the form node<k>; {expected}")
    return NodeEvent(time_s=time_ms / 1000.0, kind=kind, node=int(match.group(1)))  # type: ignore[arg-type]  # kind checked above


def write_trace(trace: FailureTrace, path: str | Path) -> None:
    """Write ``trace`` in the replayable CSV format, initial membership as time-0 ``add`` lines."""
    rows = [f"0,add,node{node}" for node in trace.initial_nodes]
    for event in trace.events:
        time_ms = round(event.time_s * 1000)
        rows += [f"{time_ms},remove,node{node}" for node in event.lost]
        rows += [f"{time_ms},add,node{node}" for node in event.joined]
    Path(path).write_text("\n".join(rows) + "\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureModel:
    """Parameters of the synthetic failure process (all rates per hour)."""

    node_rate_per_hour: float = 0.0
    """Independent failures per node per hour while the node is up."""
    repair_hours: float | None = None
    """Mean time until a failed node comes back; ``None``: failed nodes never return."""
    repair_distribution: RepairDistribution = "fixed"
    """``"fixed"``: every repair takes exactly ``repair_hours``; ``"exponential"``: that mean."""
    rack_size: int = 0
    """Nodes per rack (consecutive ids); 0 disables rack-correlated failures."""
    rack_rate_per_hour: float = 0.0
    """Failures per rack per hour; each takes down every up node of the rack at once."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.node_rate_per_hour) or self.node_rate_per_hour < 0:
            raise ConfigError(
                f"--fail-rate must be a number >= 0 (per node per hour), got {self.node_rate_per_hour}"
            )
        if self.repair_hours is not None and not (math.isfinite(self.repair_hours) and self.repair_hours > 0):
            raise ConfigError(f"--repair-hours must be a number > 0 (hours), got {self.repair_hours}")
        if self.repair_distribution not in ("fixed", "exponential"):
            raise ConfigError(
                f"--repair-distribution must be 'fixed' or 'exponential', got {self.repair_distribution!r}"
            )
        if self.rack_size < 0:
            raise ConfigError(f"--rack-size must be >= 0 nodes (0 disables racks), got {self.rack_size}")
        if not math.isfinite(self.rack_rate_per_hour) or self.rack_rate_per_hour < 0:
            raise ConfigError(
                f"--rack-fail-rate must be a number >= 0 (per rack per hour), got {self.rack_rate_per_hour}"
            )


def generate_trace(model: FailureModel, num_nodes: int, hours: float, rng: random.Random) -> FailureTrace:
    """Draw one failure trace over ``hours`` for ``num_nodes`` nodes.

    Each node alternates up/down: its next failure is exponential with the node rate; a rack's
    next failure is exponential with the rack rate and takes down every up node of the rack. The
    draws are made in one deterministic order (a heap keyed by time, then a sequence number), so
    a seed fixes the whole trace.

    Args:
        model: Rates and repair behaviour.
        num_nodes: Cluster size (all nodes up at time 0).
        hours: Horizon; no event at or after it is generated.
        rng: The run's injected random source.

    Returns:
        The validated trace.
    """
    if num_nodes <= 0:
        raise ConfigError(f"--nodes must be > 0, got {num_nodes}")
    horizon_s = hours * SECONDS_PER_HOUR
    heap: list[tuple[float, int, str, int, int]] = []
    sequence = 0
    # NOTE: a rack failure leaves the node's own failure clock in the heap; the generation number
    # marks it stale so a repaired node does not carry two failure clocks.
    generation = [0] * num_nodes

    def push(time_s: float, action: str, target: int, gen: int = 0) -> None:
        nonlocal sequence
        if time_s < horizon_s:
            heapq.heappush(heap, (time_s, sequence, action, target, gen))
            sequence += 1

    def next_failure(now_s: float, rate_per_hour: float) -> float:
        # NOTE: a denormal hourly rate underflows to 0 per second; treat it as no failures.
        rate_per_s = rate_per_hour / SECONDS_PER_HOUR
        return math.inf if rate_per_s <= 0 else now_s + rng.expovariate(rate_per_s)

    for node in range(num_nodes):
        push(next_failure(0.0, model.node_rate_per_hour), "node", node)
    if model.rack_size > 0:
        for rack in range(math.ceil(num_nodes / model.rack_size)):
            push(next_failure(0.0, model.rack_rate_per_hour), "rack", rack)
    up = [True] * num_nodes
    events: list[NodeEvent] = []

    def fail(time_s: float, node: int) -> None:
        up[node] = False
        generation[node] += 1
        events.append(NodeEvent(time_s=time_s, kind="remove", node=node))
        if model.repair_hours is not None:
            mean_s = model.repair_hours * SECONDS_PER_HOUR
            delay = mean_s if model.repair_distribution == "fixed" else rng.expovariate(1.0 / mean_s)
            push(time_s + delay, "repair", node)

    while heap:
        time_s, _, action, target, gen = heapq.heappop(heap)
        if action == "node":
            if up[target] and gen == generation[target]:
                fail(time_s, target)
        elif action == "rack":
            first = target * model.rack_size
            for node in range(first, min(first + model.rack_size, num_nodes)):
                if up[node]:
                    fail(time_s, node)
            push(next_failure(time_s, model.rack_rate_per_hour), "rack", target)
        else:
            up[target] = True
            events.append(NodeEvent(time_s=time_s, kind="add", node=target))
            push(next_failure(time_s, model.node_rate_per_hour), "node", target, generation[target])
    return build_trace(num_nodes, events, source="generated trace")


def periodic_removal_trace(
    num_nodes: int, every_s: float, until_nodes: int, rng: random.Random
) -> FailureTrace:
    """The Oobleck paper's synthetic trace: one node removed every ``every_s`` until ``until_nodes`` remain.

    Which node goes is drawn without replacement from ``rng`` (the paper does not fix an order;
    a seed fixes ours), so seeds vary only the order, never the times.

    Args:
        num_nodes: Cluster size (all up at time 0).
        every_s: Seconds between removals (the first at ``every_s``).
        until_nodes: Nodes left after the last removal.
        rng: The run's injected random source.

    Returns:
        The validated trace of ``num_nodes - until_nodes`` removals.

    Raises:
        ConfigError: ``every_s <= 0`` or ``until_nodes`` outside ``[0, num_nodes)``.
    """
    if not (math.isfinite(every_s) and every_s > 0):
        raise ConfigError(f"--remove-every-minutes must be a number > 0, got {every_s / 60:g}")
    if not 0 <= until_nodes < num_nodes:
        raise ConfigError(
            f"--remove-until-nodes must be in [0, {num_nodes - 1}] for {num_nodes} nodes, got {until_nodes}"
        )
    order = rng.sample(range(num_nodes), num_nodes - until_nodes)
    events = [
        NodeEvent(time_s=(index + 1) * every_s, kind="remove", node=node) for index, node in enumerate(order)
    ]
    return build_trace(num_nodes, events, source="periodic removal trace")
