"""What the engine reports: per-step metrics and measured reconfiguration phases.

Plain data with ``to_dict`` for ``metrics.jsonl``; the phase names match the planning core's
predicted recovery (``rebuild_groups``, ``transfer_state``) so prediction and measurement line up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """What one step did, identical on every rank except ``sample_ids``."""

    step: int
    generation: int
    loss: float
    """Mean token cross-entropy over the whole global batch."""
    grad_norm: float
    """Global gradient norm before clipping (each layer and each tied weight counted once)."""
    lr: float
    samples: int
    tokens: int
    step_s: float
    pipeline: int | None
    """This rank's pipeline index (None for a rank without a stage)."""
    sample_ids: tuple[int, ...]
    """Samples this rank's pipeline consumed (recorded on its first stage only, else empty)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LayerCopy:
    """One layer's state (parameters, AdamW moments, step count) received by this rank.

    Measured on the receiving rank: its wait ends when the bytes have landed, so ``ms`` covers the
    whole copy; a layer whose sender died mid-copy never arrives and leaves no record.
    """

    layer: int
    src: int
    """Node that sent the layer (a holder under the committed plan)."""
    dst: int
    """Node that received it (this rank's node)."""
    bytes: int
    """Bytes of state received: parameters and both moments, fp32."""
    ms: float
    """From posting this rank's receives to this layer's arrival; copies between one pair of
    ranks travel in layer order, so a later layer's figure includes the earlier ones'."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReconfigureTiming:
    """Measured phases of one :meth:`Engine.reconfigure` (phase names as the planning core's)."""

    rebuild_groups_s: float
    """Building the generation's groups and the empty layers this rank's copies land in, then
    (when state moves) the barrier after which every rank's copies start."""
    transfer_state_s: float
    """The copies (sending, receiving, assembling) and installing the new layout."""
    bytes_sent: int
    """Bytes this rank sent (one rank's figure; the job-wide total is the transfer plan's sum)."""
    bytes_received: int
    """Bytes this rank received."""
    copies: tuple[LayerCopy, ...] = ()
    """The layers this rank received, one entry per layer."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
