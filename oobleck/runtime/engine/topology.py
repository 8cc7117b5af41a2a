"""What one rank does under a plan: its stage, its neighbours, and the gradient-sync buckets.

Pure functions of (plan, rank map, layer count, tied pairs): every rank computes the same
topology, which is what makes group creation (a collective that every rank must call in the same
order) safe.

Assumptions:
    * One stage per rank, one device per stage (no tensor parallelism): a stage with ``gpus > 1``
      is rejected. Ranks of a node are consecutive: the rank of a stage is the node's first rank
      plus the stage's device index on that node.
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
    next_rank: int | None
    norm_layers: tuple[int, ...]
    """Held layers whose gradient norm this rank counts (it is their pipeline-0 holder)."""

    @property
    def is_first(self) -> bool:
        return self.stage == 0

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
        """Distinct rank sets (size > 1) needing a process group, in the order all ranks create them."""
        seen: list[tuple[int, ...]] = []
        for bucket in self.buckets:
            if len(bucket.ranks) > 1 and bucket.ranks not in seen:
                seen.append(bucket.ranks)
        return tuple(seen)


def build_topology(
    plan: Plan,
    rank_of_node: Mapping[int, int],
    *,
    num_layers: int,
    tied_pairs: tuple[tuple[int, int], ...] = (),
) -> Topology:
    """Compute every rank's stage and the gradient buckets.

    Args:
        plan: the execution plan.
        rank_of_node: first rank of each node id in the plan (ranks of a node are consecutive).
        num_layers: layers of the model; the plan's templates must cover exactly these.
        tied_pairs: (source layer, tied layer) per tied weight, e.g. ``((0, L-1),)`` for GPT-2.

    Returns:
        The topology.

    Raises:
        PlanningError: the plan does not fit the model, a node has no rank, or a stage needs
            tensor parallelism.
    """
    missing = [node for node in plan.nodes if node not in rank_of_node]
    if missing:
        raise PlanningError(f"plan nodes {missing} have no rank in rank_of_node={dict(rank_of_node)}")
    stage_ranks: list[list[int]] = []
    for index, pipeline in enumerate(plan.pipelines):
        template = pipeline.template
        if template.num_layers != num_layers:
            raise PlanningError(
                f"pipeline {index} covers {template.num_layers} layers but the model has {num_layers}"
            )
        ranks = []
        for stage, (node, devices) in zip(template.stages, template.stage_devices(), strict=True):
            if stage.gpus != 1:
                raise PlanningError(
                    f"pipeline {index}: a stage on {stage.gpus} GPUs needs tensor parallelism, which the "
                    "engine does not support; plan with max_gpus_per_stage=1"
                )
            ranks.append(rank_of_node[pipeline.nodes[node]] + devices[0])
        stage_ranks.append(ranks)
    all_ranks = [rank for ranks in stage_ranks for rank in ranks]
    if len(all_ranks) != len(set(all_ranks)):
        raise PlanningError(f"two stages map to one rank: {stage_ranks}")

    def holder(pipeline: int, layer: int) -> int:
        return stage_ranks[pipeline][plan.pipelines[pipeline].template.stage_of_layer(layer)]

    stages = []
    for p, pipeline in enumerate(plan.pipelines):
        for s, stage in enumerate(pipeline.template.stages):
            ranks = stage_ranks[p]
            stages.append(
                StageInfo(
                    rank=ranks[s],
                    pipeline=p,
                    stage=s,
                    num_stages=len(ranks),
                    layers=tuple(stage.layers),
                    microbatches=pipeline.microbatches,
                    first_microbatch=plan.first_microbatch(p),
                    prev_rank=ranks[s - 1] if s > 0 else None,
                    next_rank=ranks[s + 1] if s + 1 < len(ranks) else None,
                    norm_layers=tuple(layer for layer in stage.layers if holder(0, layer) == ranks[s])
                    if p == 0
                    else (),
                )
            )
    layer_sets: dict[tuple[int, ...], list[int]] = {}
    for layer in range(num_layers):
        holders = tuple(sorted(holder(p, layer) for p in range(len(plan.pipelines))))
        layer_sets.setdefault(holders, []).append(layer)
    tied_sets: dict[tuple[int, ...], list[int]] = {}
    for index, (source, tied) in enumerate(tied_pairs):
        tied_holders = {holder(p, lay) for p in range(len(plan.pipelines)) for lay in (source, tied)}
        holders = tuple(sorted(tied_holders))
        tied_sets.setdefault(holders, []).append(index)
    buckets = [
        Bucket(ranks, tuple(layers), tuple(tied_sets.pop(ranks, ()))) for ranks, layers in layer_sets.items()
    ]
    buckets += [Bucket(ranks, (), tuple(tied)) for ranks, tied in tied_sets.items()]
    return Topology(stages=tuple(stages), buckets=tuple(buckets), world_size=len(all_ranks))
