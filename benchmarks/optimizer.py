"""AdamW update time per parameter: oobleck's per-layer state vs torch.optim.AdamW on the same tensors.

Scenario: GPT-2-shaped layers (``--layers`` blocks of width ``--hidden``: 12 x 768 is GPT-2 124M's
blocks, 85 M parameters) with random gradients. Ours is :func:`oobleck.runtime.engine.optim.adamw_update`
over :class:`LayerState` objects (state per layer, so it can travel on recovery), calling torch's
kernel (foreach on CPU, fused on CUDA); the peers are ``torch.optim.AdamW(foreach=True)`` and
``(fused=True)`` over the very same parameter tensors (two groups: matrices with weight decay, the
rest without). Prints the median ns per parameter of ``--repeats`` timed updates and the ratios.

    python benchmarks/optimizer.py [--layers 12] [--hidden 768] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from oobleck.runtime.config import OptimConfig
from oobleck.runtime.engine.optim import LayerState, adamw_update

SEED = 0
CONFIG = OptimConfig(lr=1e-4, weight_decay=0.1)


def _block(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.LayerNorm(hidden), nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden), nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden),
    )  # fmt: skip


def _time(peers: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of one update per peer; peers alternate within each round (load hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in peers}
    for round_ in range(repeats + 1):
        for name, update in peers.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:  # round 0 is the warm-up: allocations, lazy state
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=12, help="blocks (default 12, GPT-2 124M)")
    parser.add_argument("--hidden", type=int, default=768, help="width (default 768, GPT-2 124M)")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates, median kept (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(SEED)
    blocks = [_block(args.hidden).to(device) for _ in range(args.layers)]
    states = [LayerState(index=i, module=block) for i, block in enumerate(blocks)]
    params = [p for state in states for _, p in state.params()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    count = sum(p.numel() for p in params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": CONFIG.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    peers: dict[str, Callable[[], None]] = {
        "oobleck adamw_update": lambda: adamw_update(states, CONFIG.lr, CONFIG),
    }
    for kind in ("foreach", "fused"):
        optimizer = torch.optim.AdamW(
            groups, lr=CONFIG.lr, betas=CONFIG.betas, eps=CONFIG.eps, **{kind: True}
        )
        peers[f"torch AdamW({kind}=True)"] = optimizer.step
    print(f"{count / 1e6:.1f} M parameters in {len(params)} tensors on {device}, median of {args.repeats}")
    results = _time(peers, device, args.repeats)
    ours = results["oobleck adamw_update"]
    for name, seconds in results.items():
        print(f"{name:<26} {seconds * 1e9 / count:8.2f} ns/param   ours/this {ours / seconds:5.2f}x time")


if __name__ == "__main__":
    main()
