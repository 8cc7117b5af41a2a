"""Memory model of one layer as the runtime engine holds it, per precision: the bytes a profile carries.

The engine (``oobleck/runtime/engine``) trains with fp32 parameters that are the master weights,
fp32 gradients and two fp32 AdamW moments, in every precision: bf16/fp16 only change the compute
dtype under autocast (``runtime/engine/precision.py``). So the per-layer *state* is 16 bytes per
parameter whatever the precision, plus 8 bytes per parameter of float64 gradient sums when
``optim.exact_accumulation`` is on. What precision changes is what each in-flight microbatch keeps
for backward: under autocast the matmuls save their 16-bit inputs, and each microbatch keeps its
own 16-bit copy of the matmul weights (autocast casts them once per forward).

With activation checkpointing a layer keeps only its input per in-flight microbatch and recomputes
the rest in backward.

Assumptions:
    * AdamW without amsgrad (two moments), no separate master copy (the fp32 parameter is it).
    * Planning stays torch-free: precisions are names, sizes are plain integers.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISION_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes per element of each compute precision."""
PARAM_BYTES = 4
"""Bytes per parameter element: fp32 master weights in every precision."""
GRAD_BYTES = 4
"""Bytes per gradient element: fp32 (gradients of fp32 parameters)."""
MOMENT_BYTES = 8
"""Bytes of AdamW state per parameter element: two fp32 moments."""
EXACT_SUM_BYTES = 8
"""Bytes per parameter element of the float64 gradient sums (only with exact accumulation)."""


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Bytes a holder of one layer keeps between steps (independent of microbatches in flight)."""

    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        """Parameters plus gradients plus optimizer state."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


def layer_state_bytes(num_params: int, *, exact_accumulation: bool = False) -> StateBytes:
    """State bytes of a layer with ``num_params`` parameter elements, as the engine allocates them.

    Args:
        num_params: parameter elements of the layer (a tied copy included).
        exact_accumulation: whether float64 gradient sums are kept (``optim.exact_accumulation``).

    Returns:
        Parameter, gradient (fp32, plus the float64 sums in exact mode) and optimizer bytes.
    """
    grad = GRAD_BYTES + (EXACT_SUM_BYTES if exact_accumulation else 0)
    return StateBytes(
        param_bytes=PARAM_BYTES * num_params,
        grad_bytes=grad * num_params,
        optimizer_bytes=MOMENT_BYTES * num_params,
    )


def weight_copy_bytes(matmul_params: int, precision: str) -> int:
    """Bytes of the 16-bit weight copies one in-flight microbatch keeps under autocast (0 in fp32).

    Args:
        matmul_params: elements of the layer's weights that feed matmuls (autocast casts those).
        precision: ``fp32``, ``bf16`` or ``fp16``.

    Returns:
        ``matmul_params * 2`` for bf16/fp16, else 0.
    """
    return 0 if precision == "fp32" else matmul_params * PRECISION_BYTES[precision]


def checkpointed_activation_bytes(input_bytes: int) -> int:
    """Bytes an in-flight microbatch keeps for a checkpointed layer: its input only (recomputed in backward).

    Args:
        input_bytes: bytes of the layer's input for one microbatch (token ids for an embedding).

    Returns:
        ``input_bytes``.
    """
    return input_bytes
