"""State transfer on recovery: layers (parameters, AdamW moments, step counts) move between ranks.

A transfer plan is a list of :class:`~oobleck.planning.plan.Transfer` (layer, src node, dst node).
Each copied layer travels as one flat buffer, and each (source rank, destination rank) pair adds
one int64 buffer of step counts (and, in fp16, the loss scaler's state), sent with
``torch.distributed`` point-to-point operations: tensors never go through pickle. The receiving
rank times each layer's arrival (:class:`LayerCopy`).

Assumptions:
    * Every rank of the new generation calls :func:`execute_transfers` with the same transfer list;
      ranks with nothing to send or receive return at once.
    * Source ranks still hold the layers they send (drop happens after the transfer).
    * A layer's state is its parameters, then first moments, then second moments, each in sorted
      parameter-name order (:meth:`LayerState.state_tensors`).
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
from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.optim import LayerState
from oobleck.runtime.engine.precision import LossScaler
from oobleck.runtime.engine.records import LayerCopy

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


def execute_transfers(
    transfers: Sequence[Transfer],
    *,
    rank: int,
    rank_of: Callable[[int, int, bool], int],
    held: Mapping[int, LayerState],
    make_layer: Callable[[int], LayerState],
    comm: Comm,
    scaler: LossScaler | None = None,
) -> tuple[dict[int, LayerState], TransferStats]:
    """Send the layers this rank is a source of and receive those it is a destination of.

    Each layer travels as its own flat buffer (parameters, then both moments) so its arrival can
    be timed; each (source rank, destination rank) pair adds one int64 buffer of step counts,
    followed in fp16 by the sender's loss-scaler state (replicated state: every sender holds the
    same, so a receiver simply takes it). Receives are posted before sends, and waited for in
    (pair, layer) order.

    Args:
        transfers: the whole transfer plan (identical on every rank).
        rank: this rank in the new generation.
        rank_of: ``(node, layer, as_source)`` -> rank in the new generation that sends (as_source)
            or receives that layer for that node.
        held: layers this rank holds now.
        make_layer: builds an empty-state layer with the right shapes (values are overwritten).
        comm: the new generation's communicator.
        scaler: the fp16 loss scaler (None otherwise); sent with the step counts, and overwritten
            on a receiving rank with the state it receives.

    Returns:
        The received layers by index, and the byte counts with one :class:`LayerCopy` per
        received layer.

    Raises:
        CommunicationError: a transfer failed.
        ReconfigurationError: this rank must send a layer it does not hold.
    """
    pairs: dict[tuple[int, int], list[Transfer]] = {}
    for transfer in sorted(transfers, key=lambda t: (t.layer, t.src_node, t.dst_node)):
        src = rank_of(transfer.src_node, transfer.layer, True)
        dst = rank_of(transfer.dst_node, transfer.layer, False)
        if rank in (src, dst):
            pairs.setdefault((src, dst), []).append(transfer)
    incoming = [(key, group) for key, group in sorted(pairs.items()) if key[1] == rank and key[0] != rank]
    outgoing = [(key, group) for key, group in sorted(pairs.items()) if key[0] == rank]
    start = time.perf_counter()
    pending: list[tuple[list[tuple[Transfer, LayerState, torch.Tensor, Any]], torch.Tensor, Any]] = []
    got = 0
    for (src, _), group in incoming:
        layers = []
        for transfer in group:
            state = make_layer(transfer.layer)
            tensors = state.state_tensors()
            size = sum(t.numel() for t in tensors)
            flat = torch.empty(size, dtype=tensors[0].dtype, device=tensors[0].device)
            layers.append((transfer, state, flat, comm.call("state transfer", dist.irecv, flat, src)))
            got += flat.numel() * flat.element_size()
        extra = 0 if scaler is None else 2
        steps = torch.empty(len(group) + extra, dtype=torch.int64, device=layers[0][2].device)
        pending.append((layers, steps, comm.call("state transfer", dist.irecv, steps, src)))
    sends: list[Any] = []
    sent = 0
    for (_, dst), group in outgoing:
        missing = [t.layer for t in group if t.layer not in held]
        if missing:
            raise ReconfigurationError(f"rank {rank} must send layers {missing} but does not hold them")
        states = [held[t.layer] for t in group]
        for state in states:
            flat = torch.cat([t.reshape(-1) for t in state.state_tensors()])
            sends.append(comm.call("state transfer", dist.isend, flat, dst))
            sent += flat.numel() * flat.element_size()
        steps = torch.tensor([state.step for state in states], dtype=torch.int64)
        if scaler is not None:
            steps = torch.cat([steps, scaler.to_tensor()])
        steps = steps.to(flat.device)
        sends.append(comm.call("state transfer", dist.isend, steps, dst))
    received: dict[int, LayerState] = {}
    copies: list[LayerCopy] = []
    for layers, steps, steps_work in pending:
        for transfer, _, flat, work in layers:
            comm.wait("state transfer", [work])
            copies.append(
                LayerCopy(
                    layer=transfer.layer,
                    src=transfer.src_node,
                    dst=transfer.dst_node,
                    bytes=flat.numel() * flat.element_size(),
                    ms=(time.perf_counter() - start) * 1e3,
                )
            )
        comm.wait("state transfer", [steps_work])
        if scaler is not None:
            scaler.load_tensor(steps[len(layers) :])
        with torch.no_grad():
            for (_, state, flat, _), step in zip(layers, steps[: len(layers)].tolist(), strict=True):
                offset = 0
                for tensor in state.state_tensors():
                    tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()
                state.step = int(step)
                received[state.index] = state
    comm.wait("state transfer", sends)
    return received, TransferStats(bytes_sent=sent, bytes_received=got, copies=tuple(copies))


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
