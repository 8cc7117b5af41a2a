"""Compute precision of a rank: autocast dtype, the fp16 dynamic loss scaler, and the measured tolerance.

Design choice (issue 12 allows two): **autocast over fp32 parameters**, not bf16 parameters with a
separate fp32 master copy. Why:

* The fp32 parameters *are* the master weights, and with fp32 AdamW moments they are the whole
  optimizer state: recovery transfers and checkpoints move exactly what they moved before (plus
  the loss-scaler state in fp16), and nothing can ever be re-derived from a rounded bf16 copy.
* The bytes are the same as the master-copy design: 4 (param) + 4 (grad) + 8 (moments) = 16 per
  parameter, against 2 (bf16 param) + 2 (bf16 grad) + 4 (master) + 8 (moments) = 16; the
  engine allocates no per-precision tensors that the memory model would have to track
  (``planning/memory.py`` counts only activations differently).
* Matmuls run in bf16/fp16 (autocast keeps a per-forward cache of the cast weights); the
  residual stream, layer norms, softmax and the loss stay fp32, so activations between stages are
  fp32 and a pipeline boundary rounds nothing a one-process run would not.

Assumptions:
    * Loss is computed in fp32 (``executor.microbatch_loss`` casts logits up).
    * Every rank sees the same all-reduced gradient norm, so every rank's scaler makes the same
      decision each step and holds the same state; a rank that receives layers on recovery takes
      the scaler state from its source (``transfer.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from oobleck.runtime.config import JobConfig, PrecisionOptions

LOSS_TOLERANCE_REL: dict[str, float] = {"fp32": 5e-7, "bf16": 2e-4, "fp16": 2e-4}
"""Largest relative difference allowed between per-step losses of two runs of one job that split
the batch differently (N pipelines vs one process, a recovered run vs the fault-free one) with
``optim.exact_accumulation`` off, over a short run (8 steps). Set from a measurement, about 10x the
largest spread seen, rounded up: one process vs 4 processes in a 1-stage and a 3-stage pipeline
(tiny GPT-2 and tiny LLaMA, 8 steps, lr 3e-3) differed by at most 4.4e-8 in fp32 and 1.1e-5 in
bf16 (``benchmarks/precision_spread.py``, ``docs/assumptions.md``); the recovered bf16 runs of
``tests/integration/test_precision_tolerance.py`` (a 2-stage + 3-stage plan, a node killed, then
2 + 2 stages) then showed at most 1.1e-5. fp16 takes bf16's value (its mantissa is longer; not
measured as a spread, but ``tests/integration/test_fp16_scaler_recovery.py`` holds it)."""

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """The job's precision on ``device``: as configured, else ``bf16`` on CUDA and ``fp32`` elsewhere.

    Args:
        requested: ``JobConfig.precision`` (None: pick by device).
        device: the rank's device.

    Returns:
        ``bf16``, ``fp16`` or ``fp32``.
    """
    if requested is not None:
        return requested
    return "bf16" if device.type == "cuda" else "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of ``precision`` (fp32: no autocast)."""
    return _DTYPES[precision]


def reduce_dtype(job: JobConfig) -> torch.dtype:
    """Element type of the gradient all-reduce: float64 with exact accumulation, else the option's."""
    if job.optim.exact_accumulation:
        return torch.float64
    return torch.bfloat16 if job.precision_options.grad_reduce_dtype == "bf16" else torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed forward (and its backward) under autocast, or plainly for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=compute_dtype(precision)):
        yield


@dataclass(slots=True)
class LossScaler:
    """fp16 dynamic loss scaling (the rule of ``torch.amp.GradScaler``), as plain replicated state.

    The loss is multiplied by ``scale`` before backward. A step whose global gradient norm is not
    finite is skipped (no update, no step count) and the scale is multiplied by ``backoff``;
    after ``interval`` good steps in a row the scale doubles.
    """

    scale: float
    interval: int
    backoff: float
    good_steps: int = 0
    """Finite steps since the last change of ``scale`` (GradScaler's growth tracker)."""

    @classmethod
    def from_options(cls, options: PrecisionOptions) -> LossScaler:
        """A fresh scaler with the job's settings."""
        return cls(
            scale=options.initial_loss_scale,
            interval=options.growth_interval,
            backoff=options.backoff_factor,
        )

    def update(self, grad_norm: float) -> bool:
        """Record one step's (unscaled) global gradient norm; True when the step must be applied.

        Args:
            grad_norm: the all-reduced norm divided by ``scale`` (inf/nan when a gradient overflowed).

        Returns:
            False for an overflowed step (skip it), True otherwise.
        """
        if not math.isfinite(grad_norm):
            self.scale *= self.backoff
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps >= self.interval:
            self.scale *= 2.0
            self.good_steps = 0
        return True

    def to_tensor(self) -> torch.Tensor:
        """State as two int64s (the scale's float64 bits, the good-step count): transfer-ready."""
        bits = torch.tensor([self.scale], dtype=torch.float64).view(torch.int64)
        return torch.cat([bits, torch.tensor([self.good_steps], dtype=torch.int64)])

    def load_tensor(self, state: torch.Tensor) -> None:
        """Overwrite the state from :meth:`to_tensor`'s output (bit-exact)."""
        values = state.detach().cpu().to(torch.int64)
        self.scale = float(values[:1].view(torch.float64).item())
        self.good_steps = int(values[1].item())
