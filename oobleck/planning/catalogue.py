"""Analytic per-layer profiles of well-known transformer models, derived from their published shapes.

Planning a 175B-parameter model should not need a GPU to profile it: the costs that matter to the
planner (compute time, state memory, activation memory, bytes between stages) follow closely from the
model's shape and the hardware's FLOP/s. This module turns a shape from
:mod:`oobleck.planning.shapes` into a :class:`~oobleck.planning.profile.ModelProfile` with the same
layer structure the runtime uses: ``embedding``, one layer per transformer block, and ``head``
(final norm + LM head).

Assumptions:
    * Compute: a block's forward pass costs ``2 * params_block + 2 * 2 * seq * hidden`` FLOPs per
      token (two FLOPs per weight for the matmuls, plus ``Q K^T`` and ``softmax(.) V`` over the full
      sequence, causal masking not discounted), run at ``hardware.achieved_flops``; backward costs
      twice the forward. The head costs ``2 * hidden * vocab`` per token (plus ``2 * hidden^2`` for
      BERT's MLM transform); the embedding's lookups are memory-bound and counted as ``2 * hidden``.
    * Memory, AdamW in mixed precision (bf16/fp16): 2 B/param weights, 2 B/param gradients, 12 B/param
      optimizer state (fp32 master copy + two fp32 moments). In float32: 4, 4 and 8 B/param.
    * Activations kept per block and microbatch follow Korthikanti et al., "Reducing Activation
      Recomputation in Large Transformer Models" (MLSys 2023), Eq. 1 without recomputation or tensor
      parallelism: ``s * b * h * (34 + 5 * a * s / h)`` bytes for 16-bit activations, scaled by
      ``dtype_bytes / 2`` for float32. The formula is derived for a GPT block with a 4h MLP; we use it
      for every architecture (LLaMA's SwiGLU MLP keeps a similar amount).
    * Tied embeddings (GPT-2/3, BERT): the head records ``tied_to=0`` and, like the embedding, counts
      the shared matrix in its own ``param_bytes``: a stage that holds it keeps its own copy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.profile import LayerProfile, ModelProfile, config_fingerprint
from oobleck.planning.shapes import MODELS, ModelShape, get_model_shape

logger = logging.getLogger(__name__)


#: Bytes per element of each supported compute dtype.
DTYPE_BYTES: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}

#: (weights, gradients, optimizer state) bytes per parameter for AdamW, by compute dtype.
_STATE_BYTES_PER_PARAM: dict[str, tuple[int, int, int]] = {
    "bfloat16": (2, 2, 12),
    "float16": (2, 2, 12),
    "float32": (4, 4, 8),
}

#: Logits are upcast to float32 for the softmax cross-entropy, whatever the compute dtype.
_LOGIT_BYTES = 4
#: Token ids are int64.
_TOKEN_ID_BYTES = 8


def analytic_profile(
    model: str | ModelShape,
    hardware: HardwareSpec,
    *,
    microbatch_size: int = 1,
    dtype: str = "bfloat16",
    sequence_length: int | None = None,
) -> ModelProfile:
    """Derive a per-layer profile from a model's shape and one device of ``hardware``.

    Times are for one device without tensor parallelism; the cost model scales them for stages
    that span several GPUs. The formulas are in the module docstring.

    Args:
        model: catalogue name or a shape.
        hardware: node type whose ``achieved_flops`` sets the times.
        microbatch_size: samples per microbatch ``b`` (> 0).
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        sequence_length: tokens per sample ``s``; defaults to the model's ``seq_len`` and may not
            exceed it for models with a learned position table.

    Returns:
        A profile with ``num_blocks + 2`` layers: embedding, blocks, head.

    Raises:
        ConfigError: unknown model or dtype, or a non-positive size.
    """
    shape = get_model_shape(model) if isinstance(model, str) else model
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not supported; choose one of: {', '.join(DTYPE_BYTES)}")
    if microbatch_size <= 0:
        raise ConfigError(f"microbatch_size must be > 0, got {microbatch_size}")
    seq = shape.seq_len if sequence_length is None else sequence_length
    if seq <= 0 or (shape.learned_positions and seq > shape.seq_len):
        raise ConfigError(f"model {shape.name!r}: sequence_length must be in 1..{shape.seq_len}, got {seq}")
    elem = DTYPE_BYTES[dtype]
    weight_b, grad_b, optim_b = _STATE_BYTES_PER_PARAM[dtype]
    tokens = microbatch_size * seq
    h = shape.hidden
    seconds_per_flop = 1.0 / hardware.achieved_flops

    def layer(
        name: str,
        kind: str,
        *,
        params: int,
        flops_per_token: float,
        activation: int,
        output: int,
        **extra: int,
    ) -> LayerProfile:
        forward_s = flops_per_token * tokens * seconds_per_flop
        return LayerProfile(
            name=name,
            kind=kind,  # type: ignore[arg-type]  # NOTE: callers below pass only valid kinds
            forward_s=forward_s,
            backward_s=2 * forward_s,
            param_bytes=params * weight_b,
            grad_bytes=params * grad_b,
            optimizer_bytes=params * optim_b,
            activation_bytes=activation,
            output_bytes=output,
            **extra,
        )

    hidden_bytes = tokens * h * elem
    # Korthikanti et al. Eq. 1: s*b*h*(34 + 5*a*s/h) bytes at 16 bit; integer arithmetic keeps it exact.
    block_activation = tokens * (34 * h + 5 * shape.heads * seq) * elem // 2
    embedding = layer(
        "embedding",
        "embedding",
        params=shape.embedding_params,
        flops_per_token=2 * h,
        # Token ids for the gradient scatter plus a 1-byte dropout mask per element.
        activation=tokens * (_TOKEN_ID_BYTES + h),
        output=hidden_bytes,
    )
    blocks = [
        layer(
            f"block.{index}",
            "block",
            params=shape.block_params,
            flops_per_token=2 * shape.block_params + 2 * 2 * seq * h,
            activation=block_activation,
            output=hidden_bytes,
        )
        for index in range(shape.num_blocks)
    ]
    head_flops = 2 * h * shape.vocab + (2 * h * h if shape.arch == "bert" else 0)
    head = layer(
        "head",
        "head",
        params=shape.head_params,
        flops_per_token=head_flops,
        # Norm input plus float32 logits kept for the cross-entropy backward.
        activation=hidden_bytes + tokens * shape.vocab * _LOGIT_BYTES,
        # NOTE: the head is always in the last stage, so nothing is sent onward.
        output=0,
        **({"tied_to": 0} if shape.tied_embeddings else {}),
    )
    return ModelProfile(
        model=shape.name,
        config_fingerprint=config_fingerprint({**asdict(shape), "sequence_length": seq}),
        device=hardware.name,
        dtype=dtype,
        microbatch_size=microbatch_size,
        sequence_length=seq,
        layers=(embedding, *blocks, head),
    )


def resolve_profile(model: str, hardware: HardwareSpec, *, microbatch_size: int = 1) -> ModelProfile:
    """Turn a ``--model`` argument into a profile: a catalogue name or a profile JSON file.

    Args:
        model: catalogue name, or a path to a profile written by ``ModelProfile.save`` (taken as a
            path when it ends in ``.json`` or names an existing file).
        hardware: node type for analytic profiles.
        microbatch_size: samples per microbatch; a loaded profile must have been made for it,
            because its times are per microbatch.

    Returns:
        The profile.

    Raises:
        ConfigError: unknown name, unreadable or invalid file, or a microbatch size mismatch.
    """
    if model.endswith(".json") or Path(model).is_file():
        profile = ModelProfile.load(model)
        if profile.microbatch_size != microbatch_size:
            raise ConfigError(
                f"{model}: profile was made for microbatch_size={profile.microbatch_size}, got "
                f"microbatch_size={microbatch_size}; use that size or re-profile"
            )
        if profile.device != hardware.name:
            logger.warning(
                "profile %s was measured on %r but the plan is for %r; times may not transfer",
                model,
                profile.device,
                hardware.name,
            )
        return profile
    if model not in MODELS:
        raise ConfigError(
            f"unknown model {model!r}; choose one of: {', '.join(MODELS)}, or give a profile .json"
        )
    return analytic_profile(model, hardware, microbatch_size=microbatch_size)
