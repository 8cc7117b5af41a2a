"""Per-layer AdamW state, the warmup + cosine LR schedule, and the clipping coefficient.

Optimizer state lives with its layer (:class:`LayerState`), not in a ``torch.optim`` object over a
fixed parameter list: recovery adds and drops whole layers, and a layer's moments and step count
must travel with its parameters. The update itself is torch's own AdamW kernel, called through its
functional form over the held layers' tensors (``torch.optim.adam.adam`` with decoupled weight
decay): fused on CUDA, foreach (one launch per operation for all tensors) on CPU. So an update is
bit-identical to ``torch.optim.AdamW(foreach=True)`` (CPU) or ``(fused=True)`` (CUDA) over the
same tensors, and every rank, one-process or split, performs exactly the same arithmetic.

Assumptions:
    * fp32 parameters and moments (also under bf16/fp16 autocast: they are the master weights,
      ``precision.py``); weight decay applies to matrices (>= 2 dimensions) only.
    * The learning rate is a pure function of the step, so it needs no state to survive recovery.
    * Under tensor parallelism a parameter (and its gradient) may be a DTensor: moments, gradient
      sums and the update work on its local shard only (``local_tensor``), so optimizer state is
      per shard and the arithmetic is the one-process arithmetic on that slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.adam import adam

from oobleck.runtime.config import OptimConfig
from oobleck.runtime.engine.dtensors import is_dtensor, local_tensor
from oobleck.runtime.engine.tensor_parallel import ShardSpec


def learning_rate(step: int, total_steps: int, config: OptimConfig) -> float:
    """LR of ``step`` (0-based): linear warmup to ``lr``, then cosine down to ``min_lr`` at the last step.

    Args:
        step: the optimizer step about to be taken.
        total_steps: steps of the whole job.
        config: the optimizer section.

    Returns:
        The learning rate.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    decay_steps = max(1, total_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_coefficient(grad_norm: float, max_norm: float) -> float:
    """Factor applied to every gradient so the global norm is at most ``max_norm`` (0: no clipping)."""
    if max_norm <= 0:
        return 1.0
    return min(1.0, max_norm / (grad_norm + 1e-6))


@dataclass(slots=True)
class LayerState:
    """One held layer: its module, AdamW moments per parameter name and the update count."""

    index: int
    module: nn.Module
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    """AdamW updates applied so far (drives bias correction); travels with the layer."""
    grad_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    """Float64 sums of microbatch gradients (only with ``optim.exact_accumulation``)."""
    shard_specs: dict[str, ShardSpec] = field(default_factory=dict)
    """Tensor-parallel layers: how each parameter's local shard maps to the full one (else empty)."""

    _params: list[tuple[str, nn.Parameter]] = field(default_factory=list, repr=False)
    _by_name: dict[str, nn.Parameter] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._params = sorted(self.module.named_parameters())
        self._by_name = dict(self._params)

    def params(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters in a fixed (sorted-name) order, the order of every buffer and transfer."""
        return self._params

    def ensure_moments(self) -> None:
        """Create zero moments for parameters that have none yet."""
        for name, param in self.params():
            if name not in self.exp_avg:
                local = local_tensor(param.detach())
                self.exp_avg[name] = torch.zeros_like(local, memory_format=torch.preserve_format)
                self.exp_avg_sq[name] = torch.zeros_like(local, memory_format=torch.preserve_format)

    def state_tensors(self) -> list[torch.Tensor]:
        """Parameters, first moments, second moments, each in parameter order: what a transfer moves."""
        self.ensure_moments()
        names = [name for name, _ in self.params()]
        return (
            [local_tensor(param.detach()) for _, param in self.params()]
            + [self.exp_avg[name] for name in names]
            + [self.exp_avg_sq[name] for name in names]
        )

    def zero_grad(self) -> None:
        """Forget gradients of the previous (or an interrupted) step."""
        self.grad_sum = {}
        for _, param in self.params():
            param.grad = None

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Move the gradients of one microbatch into the float64 sums (exact, order-independent)."""
        for name, param in self.params():
            if param.grad is None:
                continue
            grad = local_tensor(param.grad)
            if name in self.grad_sum:
                self.grad_sum[name].add_(grad)
            else:
                self.grad_sum[name] = grad.to(torch.float64)
            param.grad = None

    def gradient(self, name: str) -> torch.Tensor:
        """The step's gradient of ``name`` so far: the float64 sum if any, else ``.grad`` (or zeros)."""
        if name in self.grad_sum:
            return self.grad_sum[name]
        param = self._by_name[name]
        return local_tensor(param.grad if param.grad is not None else torch.zeros_like(param))

    def set_gradient(self, name: str, value: torch.Tensor, *, share: bool = False) -> None:
        """Install the synchronised gradient of ``name`` (cast to the parameter's dtype).

        Args:
            name: the parameter.
            value: its gradient (e.g. a view of an all-reduced flat buffer).
            share: install ``value`` itself when it already has the parameter's dtype (no copy);
                the caller promises nothing else writes to it. Else a private copy.
        """
        param = self._by_name[name]
        grad = value.to(param.dtype, copy=not share)
        if is_dtensor(param):
            grad = type(param).from_local(grad, param.device_mesh, param.placements, run_check=False)  # type: ignore[attr-defined]
        param.grad = grad
        self.grad_sum.pop(name, None)


def kernel_for(device: torch.device) -> str:
    """AdamW implementation used on ``device``: ``fused`` on CUDA, ``foreach`` elsewhere."""
    return "fused" if device.type == "cuda" else "foreach"


@torch.no_grad()
def adamw_update(states: list[LayerState], lr: float, config: OptimConfig, grad_scale: float = 1.0) -> None:
    """One AdamW update of every given layer, gradients multiplied by ``grad_scale`` (clipping).

    Layers are grouped by their update count (normally all equal); each group makes at most two
    calls of torch's AdamW kernel (matrices with weight decay, the rest without), fused on CUDA,
    foreach on CPU (:func:`kernel_for`).

    Args:
        states: the layers to update (each gets ``step += 1``).
        lr: learning rate of this step.
        config: betas, eps and weight decay.
        grad_scale: factor applied to every gradient before the update (clipping, loss unscaling).
    """
    beta1, beta2 = config.betas
    groups: dict[int, list[LayerState]] = {}
    for state in states:
        state.ensure_moments()
        groups.setdefault(state.step, []).append(state)
    for step, members in sorted(groups.items()):
        chosen = [(s, n, p) for s in members for n, p in s.params() if p.grad is not None]
        for state in members:
            state.step = step + 1
        if not chosen:
            continue
        # NOTE: a tensor-parallel parameter is a DTensor: the kernel updates its local shard in place.
        grads: list[torch.Tensor] = [local_tensor(p.grad) for _, _, p in chosen if p.grad is not None]
        if grad_scale != 1.0:
            # NOTE: in place: the gradients are this step's own (the next step starts from none),
            # and a scaled copy would allocate and fault in one more buffer per parameter.
            torch._foreach_mul_(grads, grad_scale)
        # NOTE: without weight decay both groups take the same arithmetic: one kernel call.
        splits = (True, False) if config.weight_decay else (None,)
        for decay in splits:
            picked = [i for i, (_, _, p) in enumerate(chosen) if decay is None or (p.dim() >= 2) == decay]
            if not picked:
                continue
            params: list[torch.Tensor] = [local_tensor(chosen[i][2].detach()) for i in picked]
            fused = kernel_for(params[0].device) == "fused"
            # NOTE: torch's kernel increments the step tensors it is given; ours are throwaway
            # copies of the layer's integer count (the count that travels is LayerState.step).
            steps = [torch.tensor(float(step), device=p.device if fused else "cpu") for p in params]
            adam(
                params,
                [grads[i] for i in picked],
                [chosen[i][0].exp_avg[chosen[i][1]] for i in picked],
                [chosen[i][0].exp_avg_sq[chosen[i][1]] for i in picked],
                [],
                steps,
                foreach=not fused,
                fused=fused,
                decoupled_weight_decay=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=lr,
                weight_decay=config.weight_decay if decay else 0.0,  # None: no decay at all
                eps=config.eps,
                maximize=False,
            )
