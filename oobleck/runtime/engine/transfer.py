"""State transfer on recovery: layers (parameters, AdamW moments, step counts) move between ranks.

A transfer plan is a list of :class:`~oobleck.planning.plan.Transfer` (layer, src node, dst node);
the planning core turns it into rank-to-rank routes at (layer, TP shard) granularity
(:func:`~oobleck.planning.transfer.reshard_routes`), so a layer moves between stages of different
TP degrees: a source rank cuts the piece the receiver needs from its shard (or from the whole
layer), a receiver holding the whole layer rebuilds it from every source shard
(:func:`~oobleck.runtime.engine.tensor_parallel.full_tensor`). Each route travels as one flat
buffer, and each (source rank, destination rank) pair adds one int64 buffer of step counts (and,
in fp16, the loss scaler's state), sent with ``torch.distributed`` point-to-point operations:
tensors never go through pickle. The receiving rank times each piece's arrival (:class:`LayerCopy`).

Assumptions:
    * Every rank of the new generation calls :func:`execute_routes` with the same routes; ranks
      with nothing to send or receive return at once.
    * Source ranks still hold the layers they send (drop happens after the transfer).
    * A layer's state is its parameters, then first moments, then second moments, each in sorted
      parameter-name order (:func:`named_state`); moments have their parameter's local layout, so
      one :class:`~oobleck.runtime.engine.tensor_parallel.ShardSpec` cuts both.
    * Source tensors are read without DTensor operations (:func:`local_data`): their process
      group belongs to the generation that just ended.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from oobleck.errors import ConfigError, ReconfigurationError
from oobleck.planning.plan import Plan, Transfer
from oobleck.planning.transfer import ShardRoute
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.dtensors import is_dtensor
from oobleck.runtime.engine.optim import LayerState
from oobleck.runtime.engine.precision import LossScaler
from oobleck.runtime.engine.records import LayerCopy
from oobleck.runtime.engine.tensor_parallel import ShardSpec, full_tensor, local_shard

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransferStats:
    """Bytes this rank moved during one reconfiguration, and the layers it received."""

    bytes_sent: int
    bytes_received: int
    copies: tuple[LayerCopy, ...] = ()


def plan_transfers(old_plan: Plan, new_plan: Plan, alive_nodes: Sequence[int]) -> tuple[Transfer, ...]:
    """Fallback transfer plan: each newly held layer comes from its first surviving old holder.

    The planning core's ``reconfigure`` is the authority; this helper exists for tests and tools
    that build plans by hand.

    Args:
        old_plan: the plan before the event.
        new_plan: the plan after it.
        alive_nodes: nodes that survived (joined nodes hold nothing yet).

    Returns:
        Transfers sorted by (layer, dst node).

    Raises:
        ReconfigurationError: a needed layer has no surviving holder.
    """
    alive = set(alive_nodes)
    transfers = []
    for node in new_plan.nodes:
        had = set(old_plan.layers_of_node(node)) if node in alive else set()
        for layer in new_plan.layers_of_node(node):
            if layer in had:
                continue
            sources = [holder for holder in old_plan.holders(layer) if holder in alive]
            if not sources:
                raise ReconfigurationError(
                    f"layer {layer} has no surviving holder; restart from a checkpoint"
                )
            transfers.append(Transfer(layer=layer, src_node=sources[0], dst_node=node, bytes=0))
    return tuple(sorted(transfers, key=lambda t: (t.layer, t.dst_node)))


@dataclass(frozen=True, slots=True)
class HeldShard:
    """A layer state a rank holds and which TP shard of the layer it is (``degree`` 1: whole)."""

    state: LayerState
    degree: int
    index: int


ShardSpecs = Callable[[int, int], Mapping[str, ShardSpec]]
"""``(layer, degree)`` -> the layer's :class:`ShardSpec` per parameter name at that TP degree."""


def local_data(param: torch.Tensor) -> torch.Tensor:
    """A parameter's local storage, read without a DTensor operation.

    NOTE: a DTensor of a past generation names a process group that is gone; any DTensor op on
    it (``detach`` included) looks that group up and may block. Under ``no_grad`` ``to_local``
    returns the local tensor itself, with no dispatch.
    """
    with torch.no_grad():
        return param.to_local() if is_dtensor(param) else param.detach()  # type: ignore[attr-defined]


def named_state(state: LayerState) -> list[tuple[str, torch.Tensor]]:
    """Parameters, first moments, second moments (each in parameter order), by parameter name."""
    state.ensure_moments()
    names = [name for name, _ in state.params()]
    return (
        [(name, local_data(param)) for name, param in state.params()]
        + [(name, state.exp_avg[name]) for name in names]
        + [(name, state.exp_avg_sq[name]) for name in names]
    )


def _is_sharded(specs: Mapping[str, ShardSpec], name: str) -> bool:
    spec = specs.get(name)
    return spec is not None and spec.dim is not None


def route_piece(held: HeldShard, route: ShardRoute, specs: ShardSpecs) -> list[torch.Tensor]:
    """The tensors of ``route``'s piece, cut from what a source rank holds (state order).

    Sharded tensors give their chunk ``route.piece`` of ``route.pieces``; replicated tensors come
    whole, and only in a route flagged ``replicated``.

    Raises:
        ReconfigurationError: the held shard does not contain the piece.
    """
    pieces, piece = route.pieces, route.piece
    if not (held.degree == 1 or (held.degree == pieces and held.index == piece)):
        raise ReconfigurationError(
            f"layer {route.layer}: this rank holds shard {held.index} of {held.degree}, which does not "
            f"contain piece {piece} of {pieces}; restart from a checkpoint"
        )
    layer_specs = specs(route.layer, pieces) if pieces > 1 else {}
    out = []
    for name, tensor in named_state(held.state):
        if not _is_sharded(layer_specs, name):
            if route.replicated:
                out.append(tensor)
        elif held.degree == pieces:
            out.append(tensor)
        else:
            out.append(local_shard(tensor, layer_specs[name], piece))
    return out


def piece_shapes(target: HeldShard, route: ShardRoute, specs: ShardSpecs) -> list[torch.Size]:
    """Shapes of the tensors of ``route``'s piece as the receiving ``target`` lays them out."""
    layer_specs = specs(route.layer, route.pieces) if route.pieces > 1 else {}
    shapes = []
    for name, tensor in named_state(target.state):
        if not _is_sharded(layer_specs, name):
            if route.replicated:
                shapes.append(tensor.shape)
        elif target.degree == route.pieces:
            shapes.append(tensor.shape)
        else:
            meta = torch.empty(tensor.shape, device="meta")
            shapes.append(local_shard(meta, layer_specs[name], route.piece).shape)
    return shapes


@torch.no_grad()
def assemble(
    target: HeldShard, got: Mapping[int, list[torch.Tensor]], specs: ShardSpecs, pieces: int
) -> None:
    """Write the received pieces (piece index -> tensors in state order) into ``target``'s tensors.

    A target holding one piece copies it; a target holding the whole layer (``degree`` 1) rebuilds
    each sharded tensor from all ``pieces`` with :func:`full_tensor`; replicated tensors come from
    the target's first piece.
    """
    layer_specs = specs(target.state.index, pieces) if pieces > 1 else {}
    cursors = dict.fromkeys(got, 0)
    first = min(got)
    for name, tensor in named_state(target.state):
        if not _is_sharded(layer_specs, name):
            value = got[first][cursors[first]]
            cursors[first] += 1
        else:
            parts = []
            for piece in sorted(got):
                parts.append(got[piece][cursors[piece]])
                cursors[piece] += 1
            value = parts[0] if target.degree == pieces else full_tensor(parts, layer_specs[name])
        tensor.copy_(value.view_as(tensor))


def receive_targets(
    routes: Sequence[ShardRoute], *, rank: int, make_layer: Callable[[int], HeldShard]
) -> dict[int, HeldShard]:
    """The empty layers this rank's incoming routes land in, by layer index.

    Made before the copies start (the engine makes them before the barrier that starts them), so
    building a module, which on a rank's first build of a layer kind costs more than copying a
    tiny layer's bytes, overlaps the peers' group builds instead of holding up its sender.

    Args:
        routes: every route of the reconfiguration (identical on every rank).
        rank: this rank in the new generation.
        make_layer: builds an empty-state layer laid out as this rank holds it in the new plan.
    """
    return {layer: make_layer(layer) for layer in sorted({r.layer for r in routes if r.dst_rank == rank})}


def execute_routes(
    routes: Sequence[ShardRoute],
    *,
    rank: int,
    held: Mapping[int, HeldShard],
    targets: Mapping[int, HeldShard],
    specs: ShardSpecs,
    comm: Comm,
    scaler: LossScaler | None = None,
) -> tuple[dict[int, HeldShard], TransferStats]:
    """Send the pieces this rank is a source of and receive those it is a destination of.

    Each route travels as its own flat buffer (its piece of parameters and both moments), so its
    arrival can be timed; each (source rank, destination rank) pair adds one int64 buffer of the
    step counts of its layers, followed in fp16 by the sender's loss-scaler state (replicated:
    every sender holds the same, so a receiver simply takes it). A route from this rank to itself
    is a local cut. Receives are posted before sends, both in (peer, layer, piece) order, so the
    messages of a pair match in order.

    Args:
        routes: every route of the reconfiguration (identical on every rank;
            :func:`~oobleck.planning.transfer.reshard_routes`).
        rank: this rank in the new generation.
        held: the layers this rank holds now (the sources of its routes).
        targets: :func:`receive_targets` of ``routes``: where this rank's incoming pieces land.
        specs: the shard specs of a layer at a TP degree.
        comm: the new generation's communicator.
        scaler: the fp16 loss scaler (None otherwise); sent with the step counts, and overwritten
            on a receiving rank with the state it receives.

    Returns:
        The received layers by index, and the byte counts with one :class:`LayerCopy` per
        received piece from another rank.

    Raises:
        CommunicationError: a transfer failed.
        ReconfigurationError: this rank must send a piece it does not hold.
    """
    incoming = sorted((r for r in routes if r.dst_rank == rank), key=lambda r: (r.src_rank, r.layer, r.piece))
    outgoing = sorted(
        (r for r in routes if r.src_rank == rank and r.dst_rank != rank),
        key=lambda r: (r.dst_rank, r.layer, r.piece),
    )
    missing = sorted({r.layer for r in routes if r.src_rank == rank and r.layer not in held})
    if missing:
        raise ReconfigurationError(f"rank {rank} must send layers {missing} but does not hold them")
    got: dict[int, dict[int, list[torch.Tensor]]] = {layer: {} for layer in targets}
    steps_of: dict[int, int] = {}
    start = time.perf_counter()
    posted: list[tuple[ShardRoute, torch.Tensor, list[torch.Size], Any]] = []
    step_recvs: list[tuple[list[int], torch.Tensor, Any]] = []
    received_bytes = 0
    for src in sorted({r.src_rank for r in incoming}):
        from_src = [r for r in incoming if r.src_rank == src]
        if src == rank:
            for route in from_src:
                got[route.layer][route.piece] = route_piece(held[route.layer], route, specs)
                steps_of[route.layer] = held[route.layer].state.step
            continue
        for route in from_src:
            target = targets[route.layer]
            shapes = piece_shapes(target, route, specs)
            like = named_state(target.state)[0][1]
            flat = torch.empty(sum(math.prod(s) for s in shapes), dtype=like.dtype, device=like.device)
            posted.append((route, flat, shapes, comm.call("state transfer", dist.irecv, flat, src)))
            received_bytes += flat.numel() * flat.element_size()
        layers = sorted({r.layer for r in from_src})
        extra = 0 if scaler is None else 2
        steps = torch.empty(len(layers) + extra, dtype=torch.int64, device=posted[-1][1].device)
        step_recvs.append((layers, steps, comm.call("state transfer", dist.irecv, steps, src)))
    sends: list[Any] = []
    sent = 0
    for dst in sorted({r.dst_rank for r in outgoing}):
        to_dst = [r for r in outgoing if r.dst_rank == dst]
        for route in to_dst:
            flat = torch.cat([t.reshape(-1) for t in route_piece(held[route.layer], route, specs)])
            sends.append(comm.call("state transfer", dist.isend, flat, dst))
            sent += flat.numel() * flat.element_size()
        layers = sorted({r.layer for r in to_dst})
        steps = torch.tensor([held[layer].state.step for layer in layers], dtype=torch.int64)
        if scaler is not None:
            steps = torch.cat([steps, scaler.to_tensor()])
        sends.append(comm.call("state transfer", dist.isend, steps.to(flat.device), dst))
    copies: list[LayerCopy] = []
    for route, flat, shapes, work in posted:
        comm.wait("state transfer", [work])
        copies.append(
            LayerCopy(
                layer=route.layer,
                src=route.src_node,
                dst=route.dst_node,
                bytes=flat.numel() * flat.element_size(),
                ms=(time.perf_counter() - start) * 1e3,
            )
        )
        parts, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            parts.append(flat[offset : offset + size].view(shape))
            offset += size
        got[route.layer][route.piece] = parts
    for layers, steps, work in step_recvs:
        comm.wait("state transfer", [work])
        if scaler is not None:
            scaler.load_tensor(steps[len(layers) :])
        steps_of.update(zip(layers, steps[: len(layers)].tolist(), strict=True))
    for layer, target in targets.items():
        pieces = max(r.pieces for r in incoming if r.layer == layer)
        assemble(target, got[layer], specs, pieces)
        target.state.step = int(steps_of[layer])
    comm.wait("state transfer", sends)
    return dict(targets), TransferStats(bytes_sent=sent, bytes_received=received_bytes, copies=tuple(copies))


def gather_full_state(
    state: LayerState, specs: Mapping[str, ShardSpec], comm: Comm, group: Any
) -> list[tuple[str, torch.Tensor]]:
    """:func:`named_state` of a sharded layer with every sharded tensor gathered whole.

    Collective over the layer's TP group (``group``): every rank of the stage calls it, in the
    same layer order. One all-gather of the layer's flattened shard per call.

    Raises:
        CommunicationError: the all-gather failed.
    """
    named = named_state(state)
    flat = torch.cat([tensor.reshape(-1) for _, tensor in named])
    degree = next(spec.degree for spec in specs.values())
    shards = [torch.empty_like(flat) for _ in range(degree)]
    comm.run("state all_gather", dist.all_gather, shards, flat, group=group)
    out, offset = [], 0
    for name, tensor in named:
        parts = [shard[offset : offset + tensor.numel()].view_as(tensor) for shard in shards]
        offset += tensor.numel()
        spec = specs[name]
        out.append((name, tensor if spec.dim is None else full_tensor(parts, spec)))
    return out


@dataclass(frozen=True, slots=True)
class TransferHold:
    """A test hook: in generation ``generation``, every source rank waits ``seconds`` before sending.

    Off unless :data:`TRANSFER_HOLD_ENV` is set. It opens a window, of known length and known
    position, in which a test can kill the source of a planned copy while its receiver waits
    for it (the survivors must then re-plan from the committed plan with another source).
    """

    generation: int
    seconds: float


TRANSFER_HOLD_ENV = "OOBLECK_TRANSFER_HOLD"
"""``GENERATION:SECONDS``, e.g. ``1:5``: see :class:`TransferHold`. Unset (the default): no hold."""


def parse_transfer_hold(text: str | None) -> TransferHold | None:
    """Parse the value of :data:`TRANSFER_HOLD_ENV`.

    Args:
        text: the variable's value, or None when unset.

    Returns:
        The hold, or None for an unset or empty variable.

    Raises:
        ConfigError: the value is not ``GENERATION:SECONDS`` with a generation >= 1 and seconds > 0.
    """
    if not text:
        return None
    generation, _, seconds = text.partition(":")
    try:
        hold = TransferHold(generation=int(generation), seconds=float(seconds))
    except ValueError:
        hold = None
    if hold is None or hold.generation < 1 or not 0 < hold.seconds < math.inf:
        raise ConfigError(
            f"environment {TRANSFER_HOLD_ENV}={text!r}: expected GENERATION:SECONDS with a generation "
            ">= 1 and seconds > 0 (e.g. 1:5); unset it to turn the hold off"
        )
    return hold


def hold_sends(
    hold: TransferHold | None, transfers: Sequence[Transfer], *, generation: int, node: int, comm: Comm
) -> None:
    """Apply the :class:`TransferHold` test hook: a source node waits before it sends.

    Called by every rank right before :func:`execute_transfers`; returns at once unless a hold
    is set for ``generation`` and ``node`` is a source of ``transfers``. Its receivers then wait in
    their receives. The wait ends early when ``comm`` latches an error (an abort after a failure
    notice), so a held rank recovers as fast as any other.

    Args:
        hold: the hook's setting (None: off).
        transfers: the generation's transfer plan.
        generation: the generation being configured.
        node: this rank's node.
        comm: the generation's communicator.
    """
    layers = [t.layer for t in transfers if t.src_node == node]
    if hold is None or hold.generation != generation or not layers:
        return
    logger.warning(
        "[node %d gen=%d] %s: holding the send of layers %s for %.1f s",
        node,
        generation,
        TRANSFER_HOLD_ENV,
        layers,
        hold.seconds,
    )
    deadline = time.monotonic() + hold.seconds
    while time.monotonic() < deadline and comm.error is None:
        time.sleep(0.01)
