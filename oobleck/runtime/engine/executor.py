"""The 1F1B stage executor: one step of one stage of one pipeline, with point-to-point transfers.

Schedule (PipeDream-flush / Megatron 1F1B): stage ``s`` of ``S`` runs ``min(S - s - 1, m)``
warm-up forwards, then alternates one forward and one backward, then drains the remaining
backwards. Where a stage both sends and receives at once (send activation / receive gradient,
send gradient / receive next activation) the two operations are issued as one
``batch_isend_irecv``: with NCCL two blocking sends facing each other would deadlock.

Assumptions:
    * Activations between stages are ``[microbatch_size, sequence_length, hidden]`` in
      ``StageContext.dtype`` (fp32: under bf16/fp16 autocast the residual stream stays fp32, so the
      cast before a send rounds nothing), the same on every boundary, so no shape metadata is
      exchanged.
    * Forward runs under the job's autocast (``precision.py``); backward and the loss run outside
      it, the loss in fp32.
    * Every stage reads its own inputs (first stage: token ids) and labels (last stage) from the
      global sampler; labels never travel through the pipeline.
    * The loss of a microbatch is its token-mean cross-entropy; backward uses it scaled by
      ``loss_scale = 1 / B`` so that summed gradients are the global-batch mean gradient.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from oobleck.runtime.engine.comm import Comm
from oobleck.runtime.engine.data import TokenDataset
from oobleck.runtime.engine.precision import autocast
from oobleck.runtime.engine.topology import StageInfo


@dataclass(slots=True)
class StageContext:
    """What one stage needs for a step: its layers, neighbours, data and activation shape."""

    info: StageInfo
    layers: Sequence[nn.Module]
    comm: Comm
    dataset: TokenDataset
    device: torch.device
    activation_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    """Element type of activations and their gradients between stages."""
    precision: str = "fp32"
    """Autocast precision of the forward: ``bf16``, ``fp16`` or ``fp32`` (none)."""
    checkpoint_layers: bool = False
    """Recompute each layer's activations in backward (``torch.utils.checkpoint``, non-reentrant)."""
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """Loss of one microbatch (a custom model's, ``custom_model.py``); None: :func:`microbatch_loss`."""


class _P2P:
    """Point-to-point helpers of one stage; each call waits for its operations to finish."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def _empty(self) -> torch.Tensor:
        return torch.empty(self.ctx.activation_shape, dtype=self.ctx.dtype, device=self.ctx.device)

    def _wire(self, output: torch.Tensor) -> torch.Tensor:
        return output.detach().to(self.ctx.dtype).contiguous()

    def _run(self, what: str, ops: list[dist.P2POp]) -> None:
        if ops:
            works = self.ctx.comm.call(what, dist.batch_isend_irecv, ops)
            self.ctx.comm.wait(what, works)

    def recv_forward(self) -> torch.Tensor | None:
        prev = self.ctx.info.prev_rank
        if prev is None:
            return None
        buffer = self._empty()
        self._run("recv activation", [dist.P2POp(dist.irecv, buffer, prev)])
        return buffer.requires_grad_()

    def _sends(self, tensor: torch.Tensor, ranks: Sequence[int]) -> list[dist.P2POp]:
        # NOTE: under TP a sender may feed several ranks of a wider next/previous stage.
        return [dist.P2POp(dist.isend, tensor, rank) for rank in ranks]

    def send_forward(self, output: torch.Tensor) -> None:
        self._run("send activation", self._sends(self._wire(output), self.ctx.info.next_targets))

    def send_forward_recv_backward(self, output: torch.Tensor) -> torch.Tensor | None:
        nxt = self.ctx.info.next_rank
        if nxt is None:
            return None
        grad = self._empty()
        ops = self._sends(self._wire(output), self.ctx.info.next_targets)
        ops.append(dist.P2POp(dist.irecv, grad, nxt))
        self._run("send activation / recv gradient", ops)
        return grad

    def recv_backward(self) -> torch.Tensor | None:
        nxt = self.ctx.info.next_rank
        if nxt is None:
            return None
        grad = self._empty()
        self._run("recv gradient", [dist.P2POp(dist.irecv, grad, nxt)])
        return grad

    def send_backward(self, grad: torch.Tensor | None) -> None:
        if grad is not None:
            self._run("send gradient", self._sends(self._wire(grad), self.ctx.info.prev_targets))

    def send_backward_recv_forward(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        prev = self.ctx.info.prev_rank
        if prev is None:
            return None
        buffer = self._empty()
        ops = self._sends(self._wire(grad), self.ctx.info.prev_targets) if grad is not None else []
        ops.append(dist.P2POp(dist.irecv, buffer, prev))
        self._run("send gradient / recv activation", ops)
        return buffer.requires_grad_()


def microbatch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of one microbatch: sum over its tokens / tokens per microbatch."""
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum"
    )
    return total / labels.numel()


def run_1f1b(
    ctx: StageContext,
    microbatches: Sequence[Sequence[int]],
    loss_scale: float,
    after_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run one step of this stage: forwards, backwards and transfers; gradients accumulate in place.

    Called once per step on every rank of the pipeline, all with the same ``microbatches``.

    Args:
        ctx: the stage.
        microbatches: sample ids of each microbatch of this pipeline, in order.
        loss_scale: factor applied to each microbatch loss before backward (``1 / B``, times the
            loss scale in fp16).
        after_backward: called after each microbatch's backward (e.g. to accumulate in float64).

    Returns:
        Sum of the (unscaled) microbatch losses on the last stage, 0 elsewhere (a 0-d fp64 tensor).

    Raises:
        CommunicationError: a send or receive failed, or an error was latched meanwhile (checked
            before every layer's forward and backward; the step's gradients are then partial, and
            the redone step starts from zero).
    """
    info, p2p = ctx.info, _P2P(ctx)
    count = len(microbatches)
    warmup = min(info.num_stages - info.stage - 1, count)
    steady = count - warmup
    saved: deque[tuple[torch.Tensor | None, torch.Tensor]] = deque()
    losses: list[torch.Tensor] = []

    def check_in_backward(grad: torch.Tensor) -> None:
        # NOTE: a hook on each layer's output runs as the backward reaches that layer, so a latched
        # failure also ends a backward between two layers; autograd re-raises it unchanged.
        ctx.comm.raise_if_failed()

    def forward(index: int, received: torch.Tensor | None) -> torch.Tensor:
        tokens = ctx.dataset.batch(microbatches[index], ctx.device) if info.is_first or info.is_last else None
        hidden = tokens[:, :-1] if tokens is not None and info.is_first else received
        if hidden is None:
            raise RuntimeError(f"stage {info.stage}: microbatch {index} has no input activation")
        with autocast(ctx.device, ctx.precision):
            for layer in ctx.layers:
                # NOTE: a failure notice (latched from the link thread) ends the step here, between
                # layers, instead of after the step's compute at its next collective.
                ctx.comm.raise_if_failed()
                if ctx.checkpoint_layers:
                    hidden = checkpoint(layer, hidden, use_reentrant=False)
                else:
                    hidden = layer(hidden)
                if type(hidden) is torch.Tensor and hidden.requires_grad:  # NOTE: not a DTensor.
                    hidden.register_hook(check_in_backward)
        if tokens is not None and info.is_last:
            loss = (ctx.loss_fn or microbatch_loss)(hidden, tokens[:, 1:])
            losses.append(loss.detach())
            hidden = loss * loss_scale
        saved.append((received, hidden))
        return hidden

    def backward(grad: torch.Tensor | None) -> torch.Tensor | None:
        received, output = saved.popleft()
        ctx.comm.raise_if_failed()
        torch.autograd.backward(output, grad_tensors=grad)
        if after_backward is not None:
            after_backward()
        return None if received is None else received.grad

    for index in range(warmup):
        p2p.send_forward(forward(index, p2p.recv_forward()))
    received = p2p.recv_forward() if steady else None
    for index in range(steady):
        output = forward(warmup + index, received)
        grad_in = backward(p2p.send_forward_recv_backward(output))
        if index == steady - 1:
            p2p.send_backward(grad_in)
        else:
            received = p2p.send_backward_recv_forward(grad_in)
    for _ in range(warmup):
        p2p.send_backward(backward(p2p.recv_backward()))
    if not losses:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(losses).double().sum().cpu()
