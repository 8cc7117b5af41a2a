"""The step cost model: stage latency and memory, 1F1B step time and gradient sync.

This is the one place where step costs are defined (recovery costs are in
:mod:`oobleck.planning.recovery`). The template search (``templates``), the simulator and the
notebooks all call these functions, so a plan's predicted numbers never disagree between them.

Assumptions:
    * A stage of layers ``[first, end)`` on ``gpus`` devices of one node runs tensor parallel: its
      compute shrinks by ``hardware.tensor_parallel_speedup(gpus)`` and its bytes split evenly.
    * Sending a microbatch to the next stage costs ``output_bytes`` forward and the same again for
      the gradient coming back, over NVLink inside a node or the NIC between nodes.
    * Under 1F1B the stage ``k``-th from the end of a pipeline (last stage: ``k = 1``) keeps ``k``
      microbatches of activations alive, because every pipeline runs at least as many microbatches
      as it has stages.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import numpy as np

from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.plan import Pipeline
from oobleck.planning.profile import ModelProfile

SendKind = Literal["none", "intra", "inter"]
_SEND_KINDS: tuple[str, ...] = ("none", "intra", "inter")


@dataclass(frozen=True, slots=True)
class LayerTables:
    """Prefix sums of a profile's per-layer costs, so any layer range costs O(1) (and vectorises).

    Entry ``k`` of a ``*_prefix`` array is the sum over layers ``0 .. k-1``; the range ``[i, j)`` is
    ``prefix[j] - prefix[i]``. Byte sums are int64 so memory checks are exact. The arrays are shared
    through a cache and are read-only.
    """

    compute_prefix_s: np.ndarray
    """Forward + backward seconds, shape ``(L + 1,)``, float64."""
    state_prefix_bytes: np.ndarray
    """Parameter + gradient + optimizer bytes, shape ``(L + 1,)``, int64."""
    activation_prefix_bytes: np.ndarray
    """Activation bytes saved per microbatch in flight, shape ``(L + 1,)``, int64."""
    grad_prefix_bytes: np.ndarray
    """Gradient bytes (what the cross-pipeline all-reduce moves), shape ``(L + 1,)``, int64."""
    output_bytes: np.ndarray
    """Bytes each layer sends to the next stage per microbatch, shape ``(L,)``, int64."""

    @property
    def num_layers(self) -> int:
        return len(self.output_bytes)

    def memory_bytes(self, first: int, end: int, gpus: int, in_flight: int) -> int:
        """:func:`stage_memory_bytes` without the profile lookup, for hot loops."""
        _check_range(self, first, end)
        state = int(self.state_prefix_bytes[end] - self.state_prefix_bytes[first])
        activations = int(self.activation_prefix_bytes[end] - self.activation_prefix_bytes[first])
        return (state + in_flight * activations) // gpus


_TABLES_CACHE: dict[int, tuple[ModelProfile, LayerTables]] = {}
_TABLES_CACHE_SIZE = 32
_TABLES_LOCK = threading.Lock()


def layer_tables(profile: ModelProfile) -> LayerTables:
    """Prefix-sum tables of ``profile``, cached per profile object.

    NOTE: the cache is keyed by ``id`` and keeps the profile alive, so an id cannot be reused while
    its entry exists; hashing a frozen profile would cost O(layers) on every call of a hot loop.

    Args:
        profile: The model's per-layer costs.

    Returns:
        Read-only prefix sums; every cost function of this module reads them, so a vectorised caller
        (the template search) gets bit-identical numbers to the scalar functions.
    """
    cached = _TABLES_CACHE.get(id(profile))
    if cached is not None and cached[0] is profile:
        return cached[1]
    tables = _build_tables(profile)
    with _TABLES_LOCK:
        if len(_TABLES_CACHE) >= _TABLES_CACHE_SIZE:
            del _TABLES_CACHE[next(iter(_TABLES_CACHE))]
        _TABLES_CACHE[id(profile)] = (profile, tables)
    return tables


def _build_tables(profile: ModelProfile) -> LayerTables:
    def prefix(values: list[Any], dtype: type) -> np.ndarray:
        array: np.ndarray = np.array([0, *accumulate(values)], dtype=dtype)
        array.flags.writeable = False
        return array

    layers = profile.layers
    output = np.array([layer.output_bytes for layer in layers], dtype=np.int64)
    output.flags.writeable = False
    return LayerTables(
        compute_prefix_s=prefix([layer.compute_s for layer in layers], np.float64),
        state_prefix_bytes=prefix([layer.state_bytes for layer in layers], np.int64),
        activation_prefix_bytes=prefix([layer.activation_bytes for layer in layers], np.int64),
        grad_prefix_bytes=prefix([layer.grad_bytes for layer in layers], np.int64),
        output_bytes=output,
    )


def send_bandwidth_bytes_per_s(hardware: HardwareSpec, send: SendKind) -> float:
    """Link bandwidth a stage boundary of kind ``send`` uses (``inf`` for ``"none"``).

    Raises:
        ValueError: ``send`` is not one of ``"none"``, ``"intra"``, ``"inter"``.
    """
    if send == "none":
        return math.inf
    if send == "intra":
        return hardware.intra_node_bandwidth_bytes_per_s
    if send == "inter":
        return hardware.inter_node_bandwidth_bytes_per_s
    raise ValueError(f"send must be one of {_SEND_KINDS}, got {send!r}")


def send_s(output_bytes: Any, bandwidth_bytes_per_s: float) -> Any:
    """Seconds to send an activation forward and receive its gradient back (scalar or array).

    Args:
        output_bytes: Bytes the stage's last layer outputs per microbatch.
        bandwidth_bytes_per_s: From :func:`send_bandwidth_bytes_per_s`; ``inf`` gives 0.

    Returns:
        ``2 * output_bytes / bandwidth``, of the same shape as ``output_bytes``.
    """
    return 2 * output_bytes / bandwidth_bytes_per_s


def combine_latency_s(compute_s: Any, speedup: float, send_seconds: Any) -> Any:
    """Stage latency from its parts; shared by the scalar and vectorised paths so both round alike."""
    return compute_s / speedup + send_seconds


def stage_latency_s(  # noqa: PLR0917 - the planning API contract fixes this positional signature
    profile: ModelProfile, hardware: HardwareSpec, first: int, end: int, gpus: int, send: SendKind
) -> float:
    """Forward + backward time of one microbatch on a stage, including the send to the next stage.

    Args:
        profile: Per-layer costs.
        hardware: Supplies the tensor-parallel speed-up and the link bandwidths.
        first: First layer of the stage.
        end: One past the stage's last layer.
        gpus: Devices of one node the stage is spread over (a power of two).
        send: Kind of link to the next stage; ``"none"`` for a pipeline's last stage.

    Returns:
        Seconds per microbatch.

    Raises:
        ValueError: the layer range is empty or out of bounds, or ``send`` is unknown.
    """
    tables = layer_tables(profile)
    _check_range(tables, first, end)
    compute = tables.compute_prefix_s[end] - tables.compute_prefix_s[first]
    bandwidth = send_bandwidth_bytes_per_s(hardware, send)
    sent = send_s(tables.output_bytes[end - 1], bandwidth)
    return float(combine_latency_s(compute, hardware.tensor_parallel_speedup(gpus), sent))


def stage_memory_bytes(profile: ModelProfile, first: int, end: int, gpus: int, in_flight: int) -> int:
    """Peak bytes per device of a stage: its state plus the activations of its microbatches in flight.

    Args:
        profile: Per-layer costs.
        first: First layer of the stage.
        end: One past the stage's last layer.
        gpus: Devices the stage's bytes are split over.
        in_flight: Microbatches whose activations the stage holds at once (``k`` for the stage
            ``k``-th from the end under 1F1B).

    Returns:
        ``(state + in_flight * activations) // gpus``.

    Raises:
        ValueError: the layer range is empty or out of bounds.
    """
    return layer_tables(profile).memory_bytes(first, end, gpus, in_flight)


def gradient_sync_s(pipelines: Sequence[Pipeline], profile: ModelProfile, hardware: HardwareSpec) -> float:
    """Time of the cross-pipeline gradient all-reduce at the end of a step.

    Every layer's replicas form one data-parallel group and all groups reduce concurrently, each
    device over its own NIC, so the slowest group is the one whose device holds the most gradient
    bytes. A ring all-reduce over ``p`` members moves ``2 (p - 1) / p`` times the buffer.

    Args:
        pipelines: The plan's pipelines.
        profile: Per-layer costs (gradient bytes).
        hardware: Supplies the inter-node bandwidth.

    Returns:
        Seconds; 0 for a single pipeline.
    """
    count = len(pipelines)
    if count <= 1:
        return 0.0
    grads = layer_tables(profile).grad_prefix_bytes
    # NOTE: pipelines share template objects; the max over each distinct one is the same max.
    templates = {id(pipeline.template): pipeline.template for pipeline in pipelines}
    largest = max(
        int(grads[stage.end_layer] - grads[stage.first_layer]) // stage.gpus
        for template in templates.values()
        for stage in template.stages
    )
    return 2 * (count - 1) / count * largest / hardware.inter_node_bandwidth_bytes_per_s


def plan_iteration_time_s(
    pipelines: Sequence[Pipeline], profile: ModelProfile, hardware: HardwareSpec
) -> float:
    """Predicted step time: the slowest pipeline's 1F1B time plus the gradient all-reduce.

    Args:
        pipelines: The plan's pipelines, each with its microbatch count.
        profile: Per-layer costs.
        hardware: Node type.

    Returns:
        Seconds per training step.
    """
    slowest = max(pipeline.iteration_time_s for pipeline in pipelines)
    return slowest + gradient_sync_s(pipelines, profile, hardware)


def _check_range(tables: LayerTables, first: int, end: int) -> None:
    if not 0 <= first < end <= tables.num_layers:
        raise ValueError(f"layer range [{first}, {end}) must be non-empty inside 0..{tables.num_layers}")
