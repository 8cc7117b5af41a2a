"""What one rank does under a plan: its stage, its neighbours, and the gradient-sync buckets.

Pure functions of (plan, rank map, layer count, tied pairs): every rank computes the same
topology, which is what makes group creation (a collective that every rank must call in the same
order) safe.

Assumptions:
    * One stage per rank. A stage on G devices of one node is G ranks, its TP group (ranks of a
      node are consecutive: the node's first rank plus the device index on that node). Its blocks
      are tensor-parallel over the group; its ``replicated_layers`` (embedding, head) are computed
      in full by every TP rank (``tensor_parallel``).
    * Pipeline transfers go TP rank to TP rank: activations between stages are replicated, so
      TP rank i of a stage receives from TP rank ``i mod G_prev`` of the stage before and gets its
      output gradient from rank ``i mod G_next`` of the stage after (equal degrees: peer to peer,
      no extra collective, every link carries one copy; unequal: the senders fan out).
    * Gradient sync is per (layer, TP shard): shard t of a sharded layer is all-reduced over the
      TP-rank-t holders of every pipeline, so every pipeline must hold a sharded layer at the same
      TP degree. A replicated layer on a multi-device stage is reduced over all its TP ranks, with
      only TP rank 0 contributing (``StageInfo.contributes``), so it is counted once.
    * Gradient-sync buckets are deduplicated by rank set: layers with the same holders share one
      flattened all-reduce; a tied weight (GPT-2 ``wte``/``lm_head``) is reduced once over the union
      of the holders of both sides, so every copy receives the very same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from oobleck.errors import PlanningError
from oobleck.planning.plan import Plan


@dataclass(frozen=True, slots=True)
class Bucket:
    """Gradients all-reduced together: layers (and tied weights) with one set of holder ranks."""

    ranks: tuple[int, ...]
    layers: tuple[int, ...]
    """Layers whose untied parameters are in this bucket, ascending."""
    tied: tuple[int, ...] = ()
    """Indices into the adapter's tied pairs reduced in this bucket."""


@dataclass(frozen=True, slots=True)
class StageInfo:
    """This rank's place in the plan."""

    rank: int
    pipeline: int
    stage: int
    num_stages: int
    layers: tuple[int, ...]
    microbatches: int
    """Microbatches this rank's pipeline runs per step (b_i)."""
    first_microbatch: int
    """Index in the step's global batch of the pipeline's first microbatch."""
    prev_rank: int | None
    """Rank of the stage before that this rank receives its input activation from."""
    next_rank: int | None
    """Rank of the stage after that this rank receives its output gradient from."""
    norm_layers: tuple[int, ...]
    """Held layers whose gradient norm this rank counts (it is their pipeline-0 holder)."""
    tp_ranks: tuple[int, ...] = ()
    """The stage's ranks (its TP group), ascending; ``(rank,)`` for a one-device stage."""
    send_next: tuple[int, ...] | None = None
    """Ranks of the stage after that receive this rank's output activation (None: ``next_rank``)."""
    send_prev: tuple[int, ...] | None = None
    """Ranks of the stage before that receive this rank's input gradient (None: ``prev_rank``)."""
    sharded_layers: tuple[int, ...] = ()
    """Held layers that are tensor-parallel on this stage (blocks of a multi-device stage)."""

    @property
    def tp_degree(self) -> int:
        return max(1, len(self.tp_ranks))

    @property
    def tp_rank(self) -> int:
        """Index of this rank in its TP group."""
        return self.tp_ranks.index(self.rank) if self.tp_ranks else 0

    def contributes(self, layer: int) -> bool:
        """Whether this rank's gradient of a held ``layer`` counts (not a TP copy of a replicated one)."""
        return self.tp_rank == 0 or layer in self.sharded_layers

    @property
    def next_targets(self) -> tuple[int, ...]:
        if self.send_next is not None:
            return self.send_next
        return () if self.next_rank is None else (self.next_rank,)

    @property
    def prev_targets(self) -> tuple[int, ...]:
        if self.send_prev is not None:
            return self.send_prev
        return () if self.prev_rank is None else (self.prev_rank,)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def records_samples(self) -> bool:
        """Whether this rank writes its pipeline's sample ids: TP rank 0 of the first stage only
        (every TP rank of that stage reads the same samples; the ledger must hold them once)."""
        return self.is_first and self.tp_rank == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1


@dataclass(frozen=True, slots=True)
class Topology:
    """Every rank's stage plus the buckets of the whole world, in creation order."""

    stages: tuple[StageInfo, ...]
    buckets: tuple[Bucket, ...]
    world_size: int

    def stage_of_rank(self, rank: int) -> StageInfo:
        for info in self.stages:
            if info.rank == rank:
                return info
        raise KeyError(f"rank {rank} has no stage in this plan")

    def buckets_of_rank(self, rank: int) -> tuple[Bucket, ...]:
        return tuple(bucket for bucket in self.buckets if rank in bucket.ranks)

    def group_rank_sets(self) -> tuple[tuple[int, ...], ...]:
        """Distinct rank sets (size > 1) needing a process group, in the order all ranks create them.

        The gradient buckets' sets, then the TP groups of multi-device stages.
        """
        seen: list[tuple[int, ...]] = []
        sets = [bucket.ranks for bucket in self.buckets] + [info.tp_ranks for info in self.stages]
        for ranks in sets:
            if len(ranks) > 1 and ranks not in seen:
                seen.append(ranks)
        return tuple(seen)


def build_topology(
    plan: Plan,
    rank_of_node: Mapping[int, int],
    *,
    num_layers: int,
    tied_pairs: tuple[tuple[int, int], ...] = (),
    replicated_layers: tuple[int, ...] = (),
) -> Topology:
    """Compute every rank's stage and the gradient buckets.

    Args:
        plan: the execution plan.
        rank_of_node: first rank of each node id in the plan (ranks of a node are consecutive).
        num_layers: layers of the model; the plan's templates must cover exactly these.
        tied_pairs: (source layer, tied layer) per tied weight, e.g. ``((0, L-1),)`` for GPT-2.
        replicated_layers: layers never sharded, even on a multi-device stage (embedding, head).

    Returns:
        The topology.

    Raises:
        PlanningError: the plan does not fit the model, a node has no rank, or pipelines hold a
            sharded layer at different TP degrees.
    """
    missing = [node for node in plan.nodes if node not in rank_of_node]
    if missing:
        raise PlanningError(f"plan nodes {missing} have no rank in rank_of_node={dict(rank_of_node)}")
    stage_ranks: list[list[tuple[int, ...]]] = []
    for index, pipeline in enumerate(plan.pipelines):
        template = pipeline.template
        if template.num_layers != num_layers:
            raise PlanningError(
                f"pipeline {index} covers {template.num_layers} layers but the model has {num_layers}"
            )
        first = [rank_of_node[pipeline.nodes[node]] for node, _ in template.stage_devices()]
        stage_ranks.append(
            [
                tuple(f + d for d in devices)
                for f, (_, devices) in zip(first, template.stage_devices(), strict=True)
            ]
        )
    all_ranks = [rank for ranks in stage_ranks for stage in ranks for rank in stage]
    if len(all_ranks) != len(set(all_ranks)):
        raise PlanningError(f"two stages map to one rank: {stage_ranks}")

    def holder(pipeline: int, layer: int) -> tuple[int, ...]:
        return stage_ranks[pipeline][plan.pipelines[pipeline].template.stage_of_layer(layer)]

    def degree(pipeline: int, layer: int) -> int:
        return 1 if layer in replicated_layers else len(holder(pipeline, layer))

    stages = []
    for p, pipeline in enumerate(plan.pipelines):
        ranks = stage_ranks[p]
        for s, stage in enumerate(pipeline.template.stages):
            group = ranks[s]
            sharded = tuple(
                layer for layer in stage.layers if len(group) > 1 and layer not in replicated_layers
            )
            for t, rank in enumerate(group):
                prev = ranks[s - 1] if s > 0 else ()
                nxt = ranks[s + 1] if s + 1 < len(ranks) else ()
                stages.append(
                    StageInfo(
                        rank=rank,
                        pipeline=p,
                        stage=s,
                        num_stages=len(ranks),
                        layers=tuple(stage.layers),
                        microbatches=pipeline.microbatches,
                        first_microbatch=plan.first_microbatch(p),
                        prev_rank=prev[t % len(prev)] if prev else None,
                        next_rank=nxt[t % len(nxt)] if nxt else None,
                        norm_layers=tuple(layer for layer in stage.layers if holder(0, layer) == group)
                        if p == 0
                        else (),
                        tp_ranks=group,
                        send_next=tuple(r for i, r in enumerate(nxt) if i % len(group) == t),
                        send_prev=tuple(r for j, r in enumerate(prev) if j % len(group) == t),
                        sharded_layers=sharded,
                    )
                )
    layer_sets: dict[tuple[int, ...], list[int]] = {}
    for layer in range(num_layers):
        degrees = sorted({degree(p, layer) for p in range(len(plan.pipelines))})
        if len(degrees) > 1:
            raise PlanningError(
                f"layer {layer} is tensor-parallel at degrees {degrees} in different pipelines; the engine "
                "syncs gradients per (layer, TP shard), so every pipeline must shard it alike; plan with "
                "tensor_parallel.max_degree=1 or with templates of one TP degree"
            )
        if degrees and degrees[0] > 1:
            shard_sets = [
                tuple(sorted(holder(p, layer)[t] for p in range(len(plan.pipelines))))
                for t in range(degrees[0])
            ]
        else:
            shard_sets = [tuple(sorted(r for p in range(len(plan.pipelines)) for r in holder(p, layer)))]
        for holders in shard_sets:
            layer_sets.setdefault(holders, []).append(layer)
    tied_sets: dict[tuple[int, ...], list[int]] = {}
    for index, (source, tied) in enumerate(tied_pairs):
        tied_holders = {
            r for p in range(len(plan.pipelines)) for lay in (source, tied) for r in holder(p, lay)
        }
        holders = tuple(sorted(tied_holders))
        tied_sets.setdefault(holders, []).append(index)
    buckets = [
        Bucket(ranks, tuple(layers), tuple(tied_sets.pop(ranks, ()))) for ranks, layers in layer_sets.items()
    ]
    buckets += [Bucket(ranks, (), tuple(tied)) for ranks, tied in tied_sets.items()]
    return Topology(stages=tuple(stages), buckets=tuple(buckets), world_size=len(all_ranks))
