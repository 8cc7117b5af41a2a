"""State transfer on recovery: layers (parameters, AdamW moments, step counts) move between ranks.

A transfer plan is a list of :class:`~oobleck.planning.plan.Transfer` (layer, src node, dst node).
All transfers between one (source rank, destination rank) pair travel as one flat buffer plus one
int64 buffer of step counts, sent with ``torch.distributed`` point-to-point operations: tensors
never go through pickle.

Assumptions:
    * Every rank of the new generation calls :func:`execute_transfers` with the same transfer list;
      ranks with nothing to send or receive return at once.
    * Source ranks still hold the layers they send (drop happens after the transfer).
    * A layer's state is its parameters, then first moments, then second moments, each in sorted
      parameter-name order (:meth:`LayerState.state_tensors`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import Plan, Transfer
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.optim import LayerState


@dataclass(frozen=True, slots=True)
class TransferStats:
    """Bytes this rank moved during one reconfiguration."""

    bytes_sent: int
    bytes_received: int


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


def execute_transfers(
    transfers: Sequence[Transfer],
    *,
    rank: int,
    rank_of: Callable[[int, int, bool], int],
    held: Mapping[int, LayerState],
    make_layer: Callable[[int], LayerState],
    comm: Comm,
) -> tuple[dict[int, LayerState], TransferStats]:
    """Send the layers this rank is a source of and receive those it is a destination of.

    Args:
        transfers: the whole transfer plan (identical on every rank).
        rank: this rank in the new generation.
        rank_of: ``(node, layer, as_source)`` -> rank in the new generation that sends (as_source)
            or receives that layer for that node.
        held: layers this rank holds now.
        make_layer: builds an empty-state layer with the right shapes (values are overwritten).
        comm: the new generation's communicator.

    Returns:
        The received layers by index, and the byte counts.

    Raises:
        CommunicationError: a transfer failed.
        ReconfigurationError: this rank must send a layer it does not hold.
    """
    pairs: dict[tuple[int, int], list[int]] = {}
    for transfer in sorted(transfers, key=lambda t: (t.layer, t.src_node, t.dst_node)):
        src = rank_of(transfer.src_node, transfer.layer, True)
        dst = rank_of(transfer.dst_node, transfer.layer, False)
        if rank in (src, dst):
            pairs.setdefault((src, dst), []).append(transfer.layer)
    ops: list[dist.P2POp] = []
    received: dict[int, LayerState] = {}
    unpack: list[tuple[list[LayerState], torch.Tensor, torch.Tensor]] = []
    sent = got = 0
    for (src, dst), layers in sorted(pairs.items()):
        if src == rank:
            missing = [layer for layer in layers if layer not in held]
            if missing:
                raise ReconfigurationError(f"rank {rank} must send layers {missing} but does not hold them")
            states = [held[layer] for layer in layers]
            flat = torch.cat([t.reshape(-1) for state in states for t in state.state_tensors()])
            steps = torch.tensor([state.step for state in states], dtype=torch.int64, device=flat.device)
            ops += [dist.P2POp(dist.isend, flat, dst), dist.P2POp(dist.isend, steps, dst)]
            sent += flat.numel() * flat.element_size()
        else:
            states = [make_layer(layer) for layer in layers]
            size = sum(t.numel() for state in states for t in state.state_tensors())
            device = states[0].state_tensors()[0].device
            flat = torch.empty(size, dtype=states[0].state_tensors()[0].dtype, device=device)
            steps = torch.empty(len(states), dtype=torch.int64, device=device)
            ops += [dist.P2POp(dist.irecv, flat, src), dist.P2POp(dist.irecv, steps, src)]
            unpack.append((states, flat, steps))
            got += flat.numel() * flat.element_size()
    if ops:
        comm.wait("state transfer", comm.call("state transfer", dist.batch_isend_irecv, ops))
    with torch.no_grad():
        for states, flat, steps in unpack:
            offset = 0
            for state, step in zip(states, steps.tolist(), strict=True):
                for tensor in state.state_tensors():
                    tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()
                state.step = int(step)
                received[state.index] = state
    return received, TransferStats(bytes_sent=sent, bytes_received=got)
