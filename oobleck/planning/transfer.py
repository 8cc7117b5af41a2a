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
from dataclasses import dataclass, field

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import PipelineTemplate, Plan, Transfer
from oobleck.planning.profile import ModelProfile


@dataclass(frozen=True, slots=True)
class LayerBytes:
    """Prefix sums of per-layer transfer bytes: the bytes of any layer range in O(1)."""

    sizes: tuple[int, ...]
    prefix: tuple[int, ...] = field(repr=False)

    @classmethod
    def of(cls, profile: ModelProfile) -> LayerBytes:
        sizes = tuple(layer.transfer_bytes for layer in profile.layers)
        prefix = [0]
        for size in sizes:
            prefix.append(prefix[-1] + size)
        return cls(sizes, tuple(prefix))

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
    ranges = [(template.num_layers, 0)] * template.num_nodes
    for stage in template.stages:
        first, end = ranges[stage.node]
        ranges[stage.node] = (min(first, stage.first_layer), max(end, stage.end_layer))
    return tuple(ranges)


def plan_transfers(old: Plan, new: Plan, lost: set[int], layer_bytes: LayerBytes) -> tuple[Transfer, ...]:
    """Copies that give every node exactly the layers it newly holds, from surviving old holders.

    Sending is spread so the busiest source sends as few bytes as possible. Copies are handled by
    size class, largest first: each goes to the least-loaded eligible source (ties: lowest node id),
    then ``_rebalance`` makes the class optimal for the bottleneck given the earlier classes.
    """
    holders: dict[int, list[int]] = {}
    old_ranges: dict[int, tuple[int, int]] = {}
    for pipeline in old.pipelines:
        for node, span in zip(pipeline.nodes, node_ranges(pipeline.template), strict=True):
            old_ranges[node] = span
            if node not in lost:
                for layer in range(*span):
                    holders.setdefault(layer, []).append(node)
    demands = []
    for pipeline in new.pipelines:
        for node, (first, end) in zip(pipeline.nodes, node_ranges(pipeline.template), strict=True):
            held = old_ranges.get(node, (0, 0))
            demands.extend((layer, node) for layer in range(first, end) if not held[0] <= layer < held[1])
    demands.sort(key=lambda demand: (-layer_bytes.sizes[demand[0]], demand))
    load: dict[int, int] = {}
    chosen: dict[tuple[int, int], int] = {}
    for size, members in itertools.groupby(demands, key=lambda demand: layer_bytes.sizes[demand[0]]):
        assigned: dict[int, list[tuple[int, int]]] = {}
        for demand in members:
            sources = holders.get(demand[0])
            if not sources:
                raise ReconfigurationError(
                    f"layer {demand[0]} lost every replica (all its holders failed); "
                    "restore from a checkpoint"
                )
            source = min(sources, key=lambda candidate: (load.get(candidate, 0), candidate))
            chosen[demand] = source
            load[source] = load.get(source, 0) + size
            assigned.setdefault(source, []).append(demand)
        _rebalance(size, chosen, assigned, load, holders)
    return tuple(
        Transfer(layer=layer, src_node=chosen[layer, node], dst_node=node, bytes=layer_bytes.sizes[layer])
        for layer, node in sorted(chosen)
    )


def _rebalance(
    size: int,
    chosen: dict[tuple[int, int], int],
    assigned: dict[int, list[tuple[int, int]]],
    load: dict[int, int],
    holders: dict[int, list[int]],
) -> None:
    """Lower the busiest source's bytes along cost-reducing paths until none exists (in place).

    A path moves one copy of this class from the busiest source ``u`` to another eligible holder,
    which hands one of its own copies on, and so on, ending at a source that stays below ``u``'s
    load. When no such path exists every reassignment keeps a source at that load, so the
    bottleneck is optimal for this size class (the semi-matching optimality argument).
    """
    while True:
        busiest = min(load, key=lambda node: (-load[node], node))
        top = load[busiest]
        parent: dict[int, tuple[tuple[int, int], int] | None] = {busiest: None}
        queue = deque([busiest])
        target = None
        while queue and target is None:
            sender = queue.popleft()
            for demand in assigned.get(sender, ()):
                for candidate in holders[demand[0]]:
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
