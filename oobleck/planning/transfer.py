"""Which surviving holder sends each layer a node newly needs: a bottleneck assignment.

After a reconfiguration every node must receive the layers (parameters and optimizer state) it holds
in the new plan but did not hold before. Any surviving old holder of a layer can send it; sends from
different nodes run in parallel, so the copy finishes when the busiest sender is done. This module
picks senders to minimise that busiest sender's bytes.

Assumptions:
    * A node's layers form one contiguous range (its stages are consecutive in the pipeline).
    * Copies of one layer all have the same size; sizes differ between layer kinds (embedding, block,
      head), which makes the general problem NP-hard, so it is solved exactly per size class (a
      semi-matching by augmenting paths) and greedily across classes, largest first.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Transfer
from oobleck.planning.profile import ModelProfile

_LAYER_BYTES: dict[int, tuple[ModelProfile, LayerBytes]] = {}
_LAYER_BYTES_SIZE = 32


@dataclass(frozen=True, slots=True)
class LayerBytes:
    """Prefix sums of per-layer transfer bytes: the bytes of any layer range in O(1)."""

    sizes: tuple[int, ...]
    prefix: tuple[int, ...] = field(repr=False)

    @classmethod
    def of(cls, profile: ModelProfile) -> LayerBytes:
        """The tables of ``profile``, cached per profile object (every re-plan asks for them)."""
        cached = _LAYER_BYTES.get(id(profile))
        if cached is not None and cached[0] is profile:
            return cached[1]
        sizes = tuple(layer.transfer_bytes for layer in profile.layers)
        prefix = [0]
        for size in sizes:
            prefix.append(prefix[-1] + size)
        tables = cls(sizes, tuple(prefix))
        if len(_LAYER_BYTES) >= _LAYER_BYTES_SIZE:
            _LAYER_BYTES.clear()
        # NOTE: keyed by id and keeping the profile alive, so an id is never reused while cached.
        _LAYER_BYTES[id(profile)] = (profile, tables)
        return tables

    def missing(self, span: tuple[int, int], held: tuple[int, int] | None) -> int:
        """Bytes of ``span`` not already covered by ``held`` (the node's old range)."""
        first, end = span
        total = self.prefix[end] - self.prefix[first]
        if held is None:
            return total
        low, high = max(first, held[0]), min(end, held[1])
        return total - (self.prefix[high] - self.prefix[low] if low < high else 0)


def node_ranges(template: PipelineTemplate) -> tuple[tuple[int, int], ...]:
    """Per template node index: the contiguous layer range ``[first, end)`` it holds."""
    return template.layout.node_ranges


def old_holders(old: Plan, lost: set[int], layers: Iterable[int]) -> dict[int, list[int]]:
    """Per layer of ``layers``: its surviving holders in ``old``, in pipeline order.

    Built only for the layers some node newly needs, from each template's layer -> node table (one
    C-level ``map`` per pipeline), because after a single loss most layers need no copy and scanning
    every layer of every node dominated re-planning at thousands of nodes.

    Args:
        old: The plan in force before the change.
        lost: Nodes that failed; they send nothing.
        layers: Layers to look up (repeats allowed).

    Returns:
        Layer -> surviving holders, one per pipeline that still has one, in pipeline order (an
        empty list when every replica was lost).
    """
    wanted = sorted(set(layers))
    templates = {id(pipeline.template): pipeline.template for pipeline in old.pipelines}
    covered = min((len(t.layout.node_of_layer) for t in templates.values()), default=0)
    inside = [layer for layer in wanted if layer < covered]
    # NOTE: per template, the node index that holds each wanted layer; pipelines share templates.
    indices = {
        key: tuple(template.layout.node_of_layer[layer] for layer in inside)
        for key, template in templates.items()
    }
    rows = [tuple(map(p.nodes.__getitem__, indices[id(p.template)])) for p in old.pipelines]
    columns = dict(zip(inside, zip(*rows, strict=True), strict=True)) if rows else {}
    holders = {}
    for layer in wanted:
        column = columns.get(layer, ())
        holders[layer] = list(column) if lost.isdisjoint(column) else [n for n in column if n not in lost]
    return holders


class Holders(Protocol):
    """Where the surviving replicas of each layer are, as the copy assignment asks for them."""

    def lowest_idle(self, layer: int, load: dict[int, int]) -> int | None:
        """The lowest-id surviving holder of ``layer`` with no load yet, or None."""
        ...

    def surviving(self, layer: int) -> list[int]:
        """Every surviving holder of ``layer`` (any order)."""
        ...

    def in_order(self, layer: int) -> Iterable[int]:
        """Surviving holders of ``layer`` in the old plan's pipeline order."""
        ...


@dataclass(frozen=True, slots=True)
class ListHolders:
    """:class:`Holders` from explicit per-layer lists (see :func:`old_holders`)."""

    lists: dict[int, list[int]]

    def lowest_idle(self, layer: int, load: dict[int, int]) -> int | None:
        sources = self.lists.get(layer)
        if not sources:
            return None
        lowest = min(sources)
        if not load.get(lowest):
            return lowest
        idle = set(sources).difference([node for node, sent in load.items() if sent])
        return min(idle) if idle else None

    def surviving(self, layer: int) -> list[int]:
        return self.lists.get(layer, [])

    def in_order(self, layer: int) -> Iterable[int]:
        return self.lists[layer]


Demand = tuple[int, int]
"""``(layer, destination node)``: one layer a node newly holds."""


def plan_transfers(old: Plan, new: Plan, lost: set[int], layer_bytes: LayerBytes) -> tuple[Transfer, ...]:
    """Copies that give every node exactly the layers it newly holds, from surviving old holders.

    Sending is spread so the busiest source sends as few bytes as possible (see
    :func:`assign_transfers`). O(nodes); the incremental re-plan passes its own demands and
    :class:`Holders` to :func:`assign_transfers` instead.
    """
    old_ranges: dict[int, tuple[int, int]] = {}
    for pipeline in old.pipelines:
        old_ranges.update(zip(pipeline.nodes, node_ranges(pipeline.template), strict=True))
    # NOTE: a pipeline kept as it was (same nodes, same template) needs nothing; after one loss that
    # is nearly every pipeline, so they are skipped before the per-node scan.
    unchanged = {(pipeline.nodes, id(pipeline.template)) for pipeline in old.pipelines}
    changed = [p for p in new.pipelines if (p.nodes, id(p.template)) not in unchanged]
    demands = pipeline_demands(changed, old_ranges.get)
    holders = ListHolders(old_holders(old, lost, (layer for layer, _ in demands)))
    return assign_transfers(demands, holders, layer_bytes)


def pipeline_demands(
    pipelines: Iterable[Pipeline], old_range: Callable[[int], tuple[int, int] | None]
) -> list[Demand]:
    """The layers each node of ``pipelines`` holds there but did not hold in the old plan."""
    demands: list[Demand] = []
    for pipeline in pipelines:
        for node, span in zip(pipeline.nodes, node_ranges(pipeline.template), strict=True):
            held = old_range(node) or (0, 0)
            if held == span:
                continue
            first, end = span
            low, high = held
            if low >= high:
                low = high = first
            # NOTE: the span minus the held range is at most two runs: [first, low) and [high, end).
            demands.extend(zip(range(first, min(end, low)), itertools.repeat(node)))
            demands.extend(zip(range(max(first, high), end), itertools.repeat(node)))
    return demands


def assign_transfers(
    demands: list[Demand], holders: Holders, layer_bytes: LayerBytes
) -> tuple[Transfer, ...]:
    """A sender for every demand, minimising the busiest sender's bytes class by class.

    Copies are handled by size class, largest first: each goes to the least-loaded eligible source
    (ties: lowest node id), then ``_rebalance`` makes the class optimal for the bottleneck given
    the earlier classes.

    Args:
        demands: ``(layer, destination)`` pairs, any order.
        holders: The surviving old holders of each layer.
        layer_bytes: Per-layer transfer sizes.

    Returns:
        The copies, sorted by (layer, destination).

    Raises:
        ReconfigurationError: a demanded layer has no surviving holder.
    """
    demands = sorted(demands, key=lambda demand: (-layer_bytes.sizes[demand[0]], demand))
    load: dict[int, int] = {}
    chosen: dict[Demand, int] = {}
    for size, members in itertools.groupby(demands, key=lambda demand: layer_bytes.sizes[demand[0]]):
        assigned: dict[int, list[Demand]] = {}
        for demand in members:
            source = holders.lowest_idle(demand[0], load)
            if source is None:
                sources = holders.surviving(demand[0])
                if not sources:
                    raise ReconfigurationError(
                        f"layer {demand[0]} lost every replica (all its holders failed); "
                        "restore from a checkpoint"
                    )
                source = min(sources, key=lambda candidate: (load[candidate], candidate))
            chosen[demand] = source
            load[source] = load.get(source, 0) + size
            assigned.setdefault(source, []).append(demand)
        _rebalance(size, chosen, assigned, load, holders)
    sizes, make = layer_bytes.sizes, Transfer.trusted
    return tuple(make(layer, chosen[layer, node], node, sizes[layer]) for layer, node in sorted(chosen))


def _rebalance(
    size: int,
    chosen: dict[tuple[int, int], int],
    assigned: dict[int, list[tuple[int, int]]],
    load: dict[int, int],
    holders: Holders,
) -> None:
    """Lower the busiest source's bytes along cost-reducing paths until none exists (in place).

    A path moves one copy of this class from the busiest source ``u`` to another eligible holder,
    which hands one of its own copies on, and so on, ending at a source that stays below ``u``'s
    load. When no such path exists every reassignment keeps a source at that load, so the
    bottleneck is optimal for this size class (the semi-matching optimality argument).
    """
    while True:
        if max(load.values()) <= size:
            # NOTE: no source can end below one copy: the search would visit every holder in vain.
            # (Checked before picking the busiest: after one loss it is the usual case.)
            return
        busiest = min(load, key=lambda node: (-load[node], node))
        top = load[busiest]
        parent: dict[int, tuple[tuple[int, int], int] | None] = {busiest: None}
        queue = deque([busiest])
        target = None
        while queue and target is None:
            sender = queue.popleft()
            for demand in assigned.get(sender, ()):
                for candidate in holders.in_order(demand[0]):
                    if candidate in parent:
                        continue
                    parent[candidate] = (demand, sender)
                    if load.get(candidate, 0) + size < top:
                        target = candidate
                        break
                    queue.append(candidate)
                if target is not None:
                    break
        if target is None:
            return
        load[busiest] -= size
        load[target] = load.get(target, 0) + size
        node = target
        while (step := parent[node]) is not None:
            demand, sender = step
            assigned[sender].remove(demand)
            assigned.setdefault(node, []).append(demand)
            chosen[demand] = node
            node = sender
