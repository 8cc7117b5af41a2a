"""The analytic layer profile: a model's per-layer costs from its parameter counts alone.

Workers price a ``profile: analytic`` job with it (``runtime/engine/profiler.estimate_profile``,
counts read off the built model) and the master prices the same job before any worker starts
(``runtime/job_plan``, counts computed from the HF config fields). Both call this one function, so
the plan the master checks is the plan the workers run, in every precision and memory mode.

Assumptions:
    * 2 FLOPs per parameter per token forward, plus attention's ``4 * b * s^2 * h`` per block;
      backward twice the forward (the usual 1:2 split); seconds at the hardware's achieved FLOP/s.
    * Activations kept per in-flight microbatch: an fp32 estimate (embedding 2, block 16, head
      ``2 * vocab / hidden`` hidden-state tensors), scaled to the compute precision's element size
      plus the 16-bit weight copies autocast keeps; with activation checkpointing only the layer's
      input (``planning/memory.py``).
    * Layer 0 is the embedding (int64 token ids in), the last layer the head; the rest are blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.memory import (
    PRECISION_BYTES,
    checkpointed_activation_bytes,
    layer_state_bytes,
    weight_copy_bytes,
)
from oobleck.planning.profile import LayerProfile, ModelProfile

HIDDEN_BYTES = 4
"""Bytes per element of the hidden states between layers: fp32 (autocast keeps the residual stream fp32)."""
TOKEN_ID_BYTES = 8
"""Bytes per token id (int64), the embedding's input."""
DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""A profile's ``dtype`` per compute precision."""


@dataclass(frozen=True, slots=True)
class AnalyticModel:
    """What the analytic profile needs of a model: sizes and per-layer parameter counts."""

    name: str
    fingerprint: str
    """The model config's fingerprint (:func:`~oobleck.planning.profile.config_fingerprint`)."""
    hidden_size: int
    vocab_size: int
    parameter_counts: tuple[int, ...]
    """Per layer: embedding, blocks, head."""
    tied_to: tuple[int | None, ...]
    """Per layer: the layer whose weights it shares (a tied head: 0), else None."""


def layer_kind(index: int, num_layers: int) -> str:
    """``embedding``, ``block`` or ``head``, as in the planning profile."""
    if index == 0:
        return "embedding"
    return "head" if index == num_layers - 1 else "block"


def layer_name(index: int, num_layers: int) -> str:
    """A layer's profile name: ``embedding``, ``block.<i>`` or ``head``."""
    kind = layer_kind(index, num_layers)
    return f"block.{index - 1}" if kind == "block" else kind


def layer_input_bytes(index: int, tokens: int, hidden_size: int) -> int:
    """Bytes of one microbatch's input to layer ``index``: int64 token ids, or fp32 hidden states."""
    return tokens * TOKEN_ID_BYTES if index == 0 else tokens * hidden_size * HIDDEN_BYTES


def profile_from_counts(
    model: AnalyticModel,
    *,
    microbatch_size: int,
    sequence_length: int,
    hardware: HardwareSpec,
    precision: str = "fp32",
    exact_accumulation: bool = False,
    activation_checkpointing: bool = False,
) -> ModelProfile:
    """The analytic profile of ``model`` for one microbatch shape, precision and memory mode.

    Args:
        model: Sizes and per-layer parameter counts.
        microbatch_size: Samples per microbatch.
        sequence_length: Tokens per sample.
        hardware: Whose achieved FLOP/s turn FLOPs into seconds (its name is the profile's device).
        precision: ``fp32``, ``bf16`` or ``fp16`` (the compute precision under autocast).
        exact_accumulation: Count the float64 gradient sums in the gradient bytes.
        activation_checkpointing: A layer keeps only its input per in-flight microbatch.

    Returns:
        The profile.
    """
    element = PRECISION_BYTES[precision]
    tokens = microbatch_size * sequence_length
    hidden = model.hidden_size
    count = len(model.parameter_counts)
    layers: list[LayerProfile] = []
    for index, params in enumerate(model.parameter_counts):
        kind = layer_kind(index, count)
        flops = 2.0 * params * tokens if kind != "embedding" else 2.0 * tokens * hidden
        activation = tokens * hidden * HIDDEN_BYTES * 2
        if kind == "block":
            flops += 4.0 * microbatch_size * sequence_length**2 * hidden
            activation = tokens * hidden * HIDDEN_BYTES * 16
        elif kind == "head":
            activation = tokens * model.vocab_size * HIDDEN_BYTES * 2
        if precision != "fp32":
            activation = activation * element // HIDDEN_BYTES
            if kind != "embedding":
                activation += weight_copy_bytes(params, precision)
        if activation_checkpointing:
            activation = checkpointed_activation_bytes(layer_input_bytes(index, tokens, hidden))
        forward = flops / hardware.achieved_flops
        state = layer_state_bytes(params, exact_accumulation=exact_accumulation)
        layers.append(
            LayerProfile(
                name=layer_name(index, count),
                kind=kind,  # type: ignore[arg-type]  # one of the three kinds
                forward_s=forward,
                backward_s=2 * forward,
                param_bytes=state.param_bytes,
                grad_bytes=state.grad_bytes,
                optimizer_bytes=state.optimizer_bytes,
                activation_bytes=activation,
                output_bytes=0 if kind == "head" else tokens * hidden * HIDDEN_BYTES,
                tied_to=model.tied_to[index],
            )
        )
    return ModelProfile(
        model=model.name,
        config_fingerprint=model.fingerprint,
        device=hardware.name,
        dtype=DTYPE_NAMES[precision],
        microbatch_size=microbatch_size,
        sequence_length=sequence_length,
        layers=tuple(layers),
    )


def tied_layers(num_layers: int, tied: Sequence[tuple[int, int]]) -> tuple[int | None, ...]:
    """Per layer, the layer it is tied to, from ``(layer, source_layer)`` pairs."""
    sources: dict[int, int] = dict(tied)
    return tuple(sources.get(index) for index in range(num_layers))
