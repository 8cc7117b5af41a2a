"""Per-layer AdamW state updated by torch's own kernel: the bits of torch.optim.AdamW on the same tensors."""

from __future__ import annotations

import torch
from torch import nn

from oobleck.runtime.config import OptimConfig
from oobleck.runtime.engine.optim import LayerState, adamw_update, kernel_for


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 8))


def test_update_is_bitwise_torch_adamw_foreach_on_cpu() -> None:
    """Five clipped AdamW steps over two layers equal torch.optim.AdamW(foreach=True) bit for bit."""
    config = OptimConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    ours, ref = _model(0), _model(0)
    states = [LayerState(index=0, module=ours[0]), LayerState(index=1, module=ours[1:])]
    named = sorted(ref.named_parameters())
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    torch_opt = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, foreach=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 8, generator=generator)
        for model in (ours, ref):
            model.zero_grad(set_to_none=True)
            model(x).pow(2).sum().backward()
        adamw_update(states, config.lr, config, grad_scale=0.5)
        for p in ref.parameters():
            assert p.grad is not None
            p.grad.mul_(0.5)
        torch_opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [s.step for s in states] == [5, 5]
    assert kernel_for(torch.device("cpu")) == "foreach" and kernel_for(torch.device("cuda")) == "fused"


def test_layers_with_different_step_counts_get_their_own_bias_correction() -> None:
    """A layer that joined later (fewer updates) is corrected with its own count, as a fresh AdamW would."""
    config = OptimConfig(lr=1e-2)
    old, new = LayerState(index=0, module=nn.Linear(4, 4)), LayerState(index=1, module=nn.Linear(4, 4))
    old.step = 3
    reference = nn.Linear(4, 4)
    reference.load_state_dict(new.module.state_dict())
    torch_opt = torch.optim.AdamW(
        reference.parameters(), lr=config.lr, betas=config.betas, weight_decay=0.0, foreach=True
    )
    for module in (old.module, new.module, reference):
        module(torch.ones(1, 4)).sum().backward()
    adamw_update([old, new], config.lr, config)
    torch_opt.step()
    assert (old.step, new.step) == (4, 1)
    assert torch.equal(new.module.weight, reference.weight)
