"""Layer profiler: per-layer time and memory on the actual device, as a planning-core ModelProfile.

``measure_profile`` builds each layer alone, runs forward and backward on a random microbatch
(warm-up runs, then the median of timed repeats), and counts parameter, gradient, AdamW state,
saved-activation and output bytes. ``cached_profile`` stores the result under a key of (model
config hash, device, dtype, microbatch size, sequence length, format version) and re-measures when
the file is missing, unreadable or does not match that key exactly: a stale profile is never used.
``estimate_profile`` is the cheap analytic alternative (FLOPs from parameter counts).

Assumptions:
    * fp32 training with AdamW (two moments per parameter, no master copy).
    * Saved activations are counted with ``torch.autograd.graph.saved_tensors_hooks``: what
      autograd keeps for backward, per microbatch in flight.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from pathlib import Path

import torch

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.profile import PROFILE_FORMAT_VERSION, LayerProfile, ModelProfile, config_fingerprint
from oobleck.runtime.engine.adapters import ModelAdapter
from oobleck.runtime.engine.executor import microbatch_loss

logger = logging.getLogger(__name__)

_DTYPE = "float32"
_BYTES = 4


def device_label(device: torch.device) -> str:
    """Profile device name: ``cpu`` or the CUDA device's marketing name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return device.type


def profile_key(adapter: ModelAdapter, device: str, microbatch_size: int, sequence_length: int) -> str:
    """Cache key of a measured profile; any difference in the inputs gives a different key."""
    parts = (
        config_fingerprint(adapter.config_dict),
        device,
        _DTYPE,
        microbatch_size,
        sequence_length,
        PROFILE_FORMAT_VERSION,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> ModelProfile:
    """Measure every layer on ``device``.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        device: where to run.
        warmup: untimed runs per layer (allocator and kernel warm-up).
        repeats: timed runs per layer; the median is kept.

    Returns:
        The profile, keyed by the model's config fingerprint.
    """
    shape = (microbatch_size, sequence_length)
    layers = []
    for index in range(adapter.num_layers):
        module = adapter.build_layer(index, seed=0, device=device)
        params = sum(p.numel() for p in module.parameters())
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
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                output = module(inputs)
                if adapter.layer_kind(index) == "head":
                    labels = torch.zeros(shape, dtype=torch.int64, device=device)
                    output = microbatch_loss(output, labels)
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
        is_head = adapter.layer_kind(index) == "head"
        tied = next((t.source_layer for t in adapter.tied if t.layer == index), None)
        layers.append(
            LayerProfile(
                name=adapter.layer_name(index),
                kind=adapter.layer_kind(index),  # type: ignore[arg-type]  # one of the three kinds
                forward_s=statistics.median(forward_times),
                backward_s=statistics.median(backward_times),
                param_bytes=params * _BYTES,
                grad_bytes=params * _BYTES,
                optimizer_bytes=2 * params * _BYTES,
                activation_bytes=saved,
                output_bytes=0
                if is_head
                else microbatch_size * sequence_length * adapter.hidden_size * _BYTES,
                tied_to=tied,
            )
        )
    return ModelProfile(
        model=adapter.name,
        config_fingerprint=config_fingerprint(adapter.config_dict),
        device=device_label(device),
        dtype=_DTYPE,
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
) -> ModelProfile:
    """A measured profile from ``cache_dir`` if one matches the exact key, else measure and store it.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        device: where to measure.
        cache_dir: folder of cached profiles (``<model>-<key>.json``).

    Returns:
        The profile; its fingerprint, device, dtype, microbatch size and sequence length equal the
        request.
    """
    label = device_label(device)
    key = profile_key(adapter, label, microbatch_size, sequence_length)
    path = Path(cache_dir) / f"{adapter.name}-{key}.json"
    expected = (config_fingerprint(adapter.config_dict), label, _DTYPE, microbatch_size, sequence_length)
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
        adapter, microbatch_size=microbatch_size, sequence_length=sequence_length, device=device
    )
    profile.save(path)
    return profile


def estimate_profile(
    adapter: ModelAdapter, *, microbatch_size: int, sequence_length: int, hardware: HardwareSpec
) -> ModelProfile:
    """Analytic profile: 2 FLOPs per parameter per token forward (plus attention), backward twice that.

    Args:
        adapter: the model.
        microbatch_size: samples per microbatch.
        sequence_length: tokens per sample.
        hardware: whose achieved FLOP/s turn FLOPs into seconds.

    Returns:
        The profile (device = the hardware's name).
    """
    tokens = microbatch_size * sequence_length
    hidden = adapter.hidden_size
    layers = []
    for index in range(adapter.num_layers):
        params = adapter.parameter_count(index)
        kind = adapter.layer_kind(index)
        flops = 2.0 * params * tokens if kind != "embedding" else 2.0 * tokens * hidden
        activation = tokens * hidden * _BYTES * 2
        if kind == "block":
            flops += 4.0 * microbatch_size * sequence_length**2 * hidden
            activation = tokens * hidden * _BYTES * 16
        elif kind == "head":
            activation = tokens * adapter.vocab_size * _BYTES * 2
        forward = flops / hardware.achieved_flops
        layers.append(
            LayerProfile(
                name=adapter.layer_name(index),
                kind=kind,  # type: ignore[arg-type]  # one of the three kinds
                forward_s=forward,
                backward_s=2 * forward,
                param_bytes=params * _BYTES,
                grad_bytes=params * _BYTES,
                optimizer_bytes=2 * params * _BYTES,
                activation_bytes=activation,
                output_bytes=0 if kind == "head" else tokens * hidden * _BYTES,
                tied_to=next((t.source_layer for t in adapter.tied if t.layer == index), None),
            )
        )
    return ModelProfile(
        model=adapter.name,
        config_fingerprint=config_fingerprint(adapter.config_dict),
        device=hardware.name,
        dtype=_DTYPE,
        microbatch_size=microbatch_size,
        sequence_length=sequence_length,
        layers=tuple(layers),
    )
