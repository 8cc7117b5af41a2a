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


@dataclass(frozen=True, slots=True)
class ShardRoute:
    """One message of a layer copy at (layer, TP shard) granularity: a piece from a rank to a rank.

    The layer's tensors are cut into ``pieces`` equal chunks along their sharded dimension (the
    larger of the two stages' TP degrees, so one piece is one source shard or one destination
    shard); the message carries chunk ``piece`` of every sharded tensor, plus the layer's
    replicated tensors when ``replicated`` (the first piece each receiver gets). ``pieces == 1``:
    the whole layer.
    """

    layer: int
    src_rank: int
    dst_rank: int
    src_node: int
    dst_node: int
    pieces: int
    piece: int
    replicated: bool


@dataclass(frozen=True, slots=True)
class StageSlot:
    """Where one copy of a layer lives: the ranks of its stage and the layer's TP degree there."""

    node: int
    ranks: tuple[int, ...]
    degree: int
    """1 (every rank holds the whole layer) or ``len(ranks)`` (rank t holds shard t)."""


def shard_routes(layer: int, src: StageSlot, dst: StageSlot) -> tuple[ShardRoute, ...]:
    """The messages that give every rank of ``dst`` its shard of ``layer`` from the ranks of ``src``.

    Both degrees must divide the larger one (true of {1, 2} and of powers of two). Destination
    rank j needs the pieces of its shard; each piece comes from the one source rank whose shard
    holds it, and a layer held whole on several source ranks is read from the destination rank
    itself when it is one of them, else from rank ``j mod |src|`` (spreading the sends). When
    the degrees are equal rank t sends shard t to rank t only.

    Args:
        layer: the layer copied.
        src: the stage it is read from (ranks numbered in the new generation).
        dst: the stage it is written to.

    Returns:
        One route per (destination rank, piece), ordered by destination rank then piece.

    Raises:
        ReconfigurationError: a degree does not divide the larger one.
    """
    pieces = max(src.degree, dst.degree)
    if pieces % src.degree or pieces % dst.degree:
        raise ReconfigurationError(
            f"layer {layer} cannot be resharded from TP degree {src.degree} to {dst.degree}: one must "
            "divide the other; plan with tensor_parallel.max_degree a power of two"
        )
    src_span, dst_span = pieces // src.degree, pieces // dst.degree
    routes = []
    for j, dst_rank in enumerate(dst.ranks):
        shard = j if dst.degree > 1 else 0
        for piece in range(shard * dst_span, (shard + 1) * dst_span):
            if src.degree > 1:
                s = piece // src_span
            else:  # NOTE: whole on every source rank: read it from itself if it is one, else spread.
                s = src.ranks.index(dst_rank) if dst_rank in src.ranks else j % len(src.ranks)
            routes.append(
                ShardRoute(
                    layer=layer,
                    src_rank=src.ranks[s],
                    dst_rank=dst_rank,
                    src_node=src.node,
                    dst_node=dst.node,
                    pieces=pieces,
                    piece=piece,
                    replicated=piece == shard * dst_span,
                )
            )
    return tuple(routes)


def stage_slot(
    plan: Plan, node: int, layer: int, first_rank: Callable[[int], int], sharded: Callable[[int], bool]
) -> StageSlot:
    """The stage of ``node`` that holds ``layer`` in ``plan``, with ranks ``first_rank(node) + device``.

    Args:
        plan: the plan.
        node: a node holding ``layer`` in ``plan``.
        layer: the layer.
        first_rank: node id -> its first rank in the generation the ranks are numbered in.
        sharded: whether ``layer`` is tensor-parallel on a multi-device stage (not embedding/head).

    Raises:
        ReconfigurationError: ``node`` does not hold ``layer`` in ``plan``.
    """
    for pipeline in plan.pipelines:
        if node not in pipeline.nodes:
            continue
        template = pipeline.template
        placement, devices = template.stage_devices()[template.stage_of_layer(layer)]
        if pipeline.nodes[placement] != node:
            break
        ranks = tuple(first_rank(node) + d for d in devices)
        return StageSlot(node=node, ranks=ranks, degree=len(ranks) if sharded(layer) else 1)
    raise ReconfigurationError(f"node {node} does not hold layer {layer} in the plan")


def reshard_routes(
    transfers: Iterable[Transfer],
    old: Plan,
    new: Plan,
    first_rank: Callable[[int], int],
    sharded: Callable[[int], bool],
) -> tuple[ShardRoute, ...]:
    """Every rank-to-rank message of a reconfiguration, the planner's copies and in-node reshards.

    The planner's copies are node to node (``transfers``); a node that keeps a layer may still
    hold it on another stage of its own devices, at another TP degree or shard, so each kept
    layer is also routed from the node to itself. A route from a rank to itself that carries
    exactly the shard that rank holds is no copy and is left out. Pure and deterministic: every
    rank computes the same routes.

    Args:
        transfers: the planner's copies (layer, source node, destination node).
        old: the plan the sources hold their layers under (the committed plan).
        new: the plan being configured.
        first_rank: node id -> its first rank in the new generation (same process, same local
            device index, so a rank of ``old`` renumbered this way is the same process).
        sharded: whether a layer is tensor-parallel when its stage has several devices.

    Returns:
        Routes sorted by (layer, destination rank, piece).
    """
    copies = {(t.layer, t.dst_node): t.src_node for t in transfers}
    old_nodes = set(old.nodes)
    for node in new.nodes:
        if node in old_nodes:
            kept = set(old.layers_of_node(node))
            for layer in new.layers_of_node(node):
                if layer in kept:
                    copies.setdefault((layer, node), node)
    routes = []
    for (layer, dst_node), src_node in copies.items():
        src = stage_slot(old, src_node, layer, first_rank, sharded)
        dst = stage_slot(new, dst_node, layer, first_rank, sharded)
        for route in shard_routes(layer, src, dst):
            same = src.degree == dst.degree and route.src_rank == route.dst_rank
            if not same:
                routes.append(route)
    return tuple(sorted(routes, key=lambda r: (r.layer, r.dst_rank, r.piece)))
