"""Layer profiler: per-layer time and memory on the actual device, as a planning-core ModelProfile.

``measure_profile`` builds each layer alone, runs forward and backward on a random microbatch
(warm-up runs, then the median of timed repeats), and counts parameter, gradient, AdamW state,
saved-activation and output bytes. ``cached_profile`` stores the result under a key of (model
config hash, device, dtype, microbatch size, sequence length, format version) and re-measures when
the file is missing, unreadable or does not match that key exactly: a stale profile is never used.
``estimate_profile`` is the cheap analytic alternative (FLOPs from parameter counts).

State bytes (parameters, gradients, AdamW moments, float64 sums in exact mode) come from the
planning core's memory model (:mod:`oobleck.planning.memory`), which counts what the engine
allocates; the unit tests check it against the tensors of built stages.

Assumptions:
    * fp32 parameters (the master weights) and AdamW moments in every precision; bf16/fp16 are
      the autocast dtype of the forward, which the profiler measures under (``precision.py``).
    * Saved activations are counted with ``torch.autograd.graph.saved_tensors_hooks``: what
      autograd keeps for backward, per microbatch in flight (under autocast that includes the
      16-bit weight copies). With activation checkpointing a layer keeps only its input.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from pathlib import Path

import torch

from oobleck.errors import ConfigError
from oobleck.planning.analytic import (
    DTYPE_NAMES,
    HIDDEN_BYTES,
    AnalyticModel,
    layer_input_bytes,
    profile_from_counts,
    tied_layers,
)
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.memory import (
    checkpointed_activation_bytes,
    layer_state_bytes,
)
from oobleck.planning.profile import PROFILE_FORMAT_VERSION, LayerProfile, ModelProfile, config_fingerprint
from oobleck.runtime.engine.adapters import ModelAdapter
from oobleck.runtime.engine.custom_model import CustomAdapter
from oobleck.runtime.engine.executor import microbatch_loss
from oobleck.runtime.engine.precision import autocast

logger = logging.getLogger(__name__)


def device_label(device: torch.device) -> str:
    """Profile device name: ``cpu`` or the CUDA device's marketing name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return device.type


def profile_key(
    adapter: ModelAdapter,
    device: str,
    microbatch_size: int,
    sequence_length: int,
    memory: tuple[str, bool, bool] = ("fp32", False, False),
) -> str:
    """Cache key of a measured profile; any difference in the inputs gives a different key.

    ``memory`` is (precision, exact accumulation, activation checkpointing); the fp32 default
    keeps the keys of profiles cached before precision existed.
    """
    parts: tuple[object, ...] = (
        config_fingerprint(adapter.config_dict),
        device,
        DTYPE_NAMES[memory[0]],
        microbatch_size,
        sequence_length,
        PROFILE_FORMAT_VERSION,
    )
    if memory != ("fp32", False, False):
        parts += memory
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layer_profile(
    adapter: ModelAdapter,
    index: int,
    *,
    times: tuple[float, float],
    activation_bytes: int,
    tokens: int,
    exact_accumulation: bool,
) -> LayerProfile:
    state = layer_state_bytes(adapter.parameter_count(index), exact_accumulation=exact_accumulation)
    kind = adapter.layer_kind(index)
    return LayerProfile(
        name=adapter.layer_name(index),
        kind=kind,  # type: ignore[arg-type]  # one of the three kinds
        forward_s=times[0],
        backward_s=times[1],
        param_bytes=state.param_bytes,
        grad_bytes=state.grad_bytes,
        optimizer_bytes=state.optimizer_bytes,
        activation_bytes=activation_bytes,
        output_bytes=0 if kind == "head" else tokens * adapter.hidden_size * HIDDEN_BYTES,
        tied_to=next((t.source_layer for t in adapter.tied if t.layer == index), None),
    )


def _layer_input(
    adapter: ModelAdapter, index: int, shape: tuple[int, int], device: torch.device
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(index)
    if index == 0:
        return torch.randint(0, adapter.vocab_size, shape, generator=generator).to(device)
    return torch.randn((*shape, adapter.hidden_size), generator=generator).to(device).requires_grad_()


def measure_profile(
    adapter: ModelAdapter,
    *,
    microbatch_size: int,
    sequence_length: int,
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
    precision: str = "fp32",
    exact_accumulation: bool = False,
    activation_checkpointing: bool = False,
) -> ModelProfile:
    """Measure every layer on ``device``, forward under the job's autocast precision.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        device: where to run.
        warmup: untimed runs per layer (allocator and kernel warm-up).
        repeats: timed runs per layer; the median is kept.
        precision: ``fp32``, ``bf16`` or ``fp16`` (the autocast dtype).
        exact_accumulation: count the float64 gradient sums in the gradient bytes.
        activation_checkpointing: the layer keeps only its input per in-flight microbatch.

    Returns:
        The profile, keyed by the model's config fingerprint.
    """
    shape = (microbatch_size, sequence_length)
    layers = []
    for index in range(adapter.num_layers):
        module = adapter.build_layer(index, seed=0, device=device)
        forward_times, backward_times, saved = [], [], 0
        for run in range(warmup + repeats):
            inputs = _layer_input(adapter, index, shape, device)
            saved_now = 0

            def pack(tensor: torch.Tensor) -> torch.Tensor:
                nonlocal saved_now
                saved_now += tensor.numel() * tensor.element_size()
                return tensor

            _sync(device)
            start = time.perf_counter()
            with (
                torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
                autocast(device, precision),
            ):
                output = module(inputs)
                if adapter.layer_kind(index) == "head":
                    labels = torch.zeros(shape, dtype=torch.int64, device=device)
                    # NOTE: a custom model's head is timed with its own loss (its output need not be logits).
                    loss_fn = adapter.loss if isinstance(adapter, CustomAdapter) else microbatch_loss
                    output = loss_fn(output, labels)
            _sync(device)
            middle = time.perf_counter()
            grad = torch.ones_like(output) if output.dim() else None
            torch.autograd.backward(output, grad_tensors=grad)
            _sync(device)
            end = time.perf_counter()
            module.zero_grad(set_to_none=True)
            if run >= warmup:
                forward_times.append(middle - start)
                backward_times.append(end - middle)
                saved = max(saved, saved_now)
        tokens = microbatch_size * sequence_length
        if activation_checkpointing:
            saved = checkpointed_activation_bytes(layer_input_bytes(index, tokens, adapter.hidden_size))
        layers.append(
            _layer_profile(
                adapter,
                index,
                times=(statistics.median(forward_times), statistics.median(backward_times)),
                activation_bytes=saved,
                tokens=tokens,
                exact_accumulation=exact_accumulation,
            )
        )
    return ModelProfile(
        model=adapter.name,
        config_fingerprint=config_fingerprint(adapter.config_dict),
        device=device_label(device),
        dtype=DTYPE_NAMES[precision],
        microbatch_size=microbatch_size,
        sequence_length=sequence_length,
        layers=tuple(layers),
    )


def cached_profile(
    adapter: ModelAdapter,
    *,
    microbatch_size: int,
    sequence_length: int,
    device: torch.device,
    cache_dir: str | Path,
    precision: str = "fp32",
    exact_accumulation: bool = False,
    activation_checkpointing: bool = False,
) -> ModelProfile:
    """A measured profile from ``cache_dir`` if one matches the exact key, else measure and store it.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        device: where to measure.
        cache_dir: folder of cached profiles (``<model>-<key>.json``).
        precision: see :func:`measure_profile`.
        exact_accumulation: see :func:`measure_profile`.
        activation_checkpointing: see :func:`measure_profile`.

    Returns:
        The profile; its fingerprint, device, dtype, microbatch size and sequence length equal the
        request.
    """
    label = device_label(device)
    memory = (precision, exact_accumulation, activation_checkpointing)
    key = profile_key(adapter, label, microbatch_size, sequence_length, memory)
    path = Path(cache_dir) / f"{adapter.name}-{key}.json"
    dtype = DTYPE_NAMES[precision]
    expected = (config_fingerprint(adapter.config_dict), label, dtype, microbatch_size, sequence_length)
    if path.exists():
        try:
            profile = ModelProfile.load(path)
        except ConfigError as error:
            logger.warning("ignoring unreadable cached profile %s: %s", path, error)
        else:
            found = (
                profile.config_fingerprint,
                profile.device,
                profile.dtype,
                profile.microbatch_size,
                profile.sequence_length,
            )
            if found == expected and profile.num_layers == adapter.num_layers:
                logger.info("using cached profile %s", path)
                return profile
            logger.warning(
                "cached profile %s does not match %s (has %s); re-measuring", path, expected, found
            )
    profile = measure_profile(
        adapter,
        microbatch_size=microbatch_size,
        sequence_length=sequence_length,
        device=device,
        precision=precision,
        exact_accumulation=exact_accumulation,
        activation_checkpointing=activation_checkpointing,
    )
    profile.save(path)
    return profile


def estimate_profile(
    adapter: ModelAdapter,
    *,
    microbatch_size: int,
    sequence_length: int,
    hardware: HardwareSpec,
    precision: str = "fp32",
    exact_accumulation: bool = False,
    activation_checkpointing: bool = False,
) -> ModelProfile:
    """Analytic profile: 2 FLOPs per parameter per token forward (plus attention), backward twice that.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        hardware: whose achieved FLOP/s turn FLOPs into seconds.
        precision: autocast precision: activations saved in its element size (fp32 residual
            stream aside), plus the 16-bit weight copies each in-flight microbatch keeps.
        exact_accumulation: count the float64 gradient sums in the gradient bytes.
        activation_checkpointing: a layer keeps only its input per in-flight microbatch.

    Returns:
        The profile (device = the hardware's name).
    """
    # NOTE: the formulas live in the planning core, shared with the master's torch-free preflight.
    model = AnalyticModel(
        name=adapter.name,
        fingerprint=config_fingerprint(adapter.config_dict),
        hidden_size=adapter.hidden_size,
        vocab_size=adapter.vocab_size,
        parameter_counts=tuple(adapter.parameter_count(index) for index in range(adapter.num_layers)),
        tied_to=tied_layers(adapter.num_layers, [(t.layer, t.source_layer) for t in adapter.tied]),
    )
    return profile_from_counts(
        model,
        microbatch_size=microbatch_size,
        sequence_length=sequence_length,
        hardware=hardware,
        precision=precision,
        exact_accumulation=exact_accumulation,
        activation_checkpointing=activation_checkpointing,
    )
