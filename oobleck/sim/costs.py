"""Every constant a simulated recovery costs, in one place a user can override with ``--costs``.

The planning core's :class:`~oobleck.planning.recovery.RecoveryConstants` prices Oobleck's own
reconfiguration and the checkpoint-restart fallback (restart time, checkpoint save/load bandwidth)
and its :class:`~oobleck.planning.step_time.StepConstants` say how long a plan's steps really take
(calibrated from measured runs; by default the planner's own price); :class:`SimCosts` adds the
per-policy constants of the baselines. A ``--costs`` JSON file is one flat object whose keys are
fields of any of the three classes; an unknown key is an error, never silently ignored.

Assumptions:
    * A checkpoint holds every layer's parameters and optimizer state once, sharded: every node of
      the plan (each data-parallel rank of each stage) writes, and after a restart reads, a disjoint
      ``1 / nodes`` share in parallel at the per-node bandwidth of ``RecoveryConstants`` (what
      Megatron's distributed checkpoints and DeepSpeed's ZeRO checkpoints do).
    * The checkpoint period is Daly's (2006) higher-order optimum for the *configured* mean time
      between failures, never one measured on the trace being replayed (that would be knowledge of
      the future).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.planning.profile import ModelProfile
from oobleck.planning.recovery import RecoveryConstants
from oobleck.planning.step_time import StepConstants
from oobleck.planning.validation import check_keys, check_number, errors_from, read_json_file

_NESTED = ("recovery", "step")
"""Fields of :class:`SimCosts` that hold a planning-core class, flattened into the ``--costs`` keys."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimCosts:
    """Per-policy cost constants plus the planning core's recovery constants."""

    recovery: RecoveryConstants = field(default_factory=RecoveryConstants)
    """Oobleck's reconfiguration phases and the restart/load/save costs every policy shares."""
    step: StepConstants = field(default_factory=StepConstants)
    """How long the chosen plans' steps take, for every policy (default: as planned)."""
    checkpoint_interval_s: float | None = None
    """Checkpoint period of ``checkpoint`` and ``varuna``; ``None`` picks Daly's optimum
    (:func:`daly_interval_s`) from the checkpoint cost and the configured mean time between failures
    of the nodes in use."""
    checkpoint_async_overhead_s: float | None = None
    """``None``: checkpoints are written synchronously (training stops for the whole write). A
    number: checkpoints are written asynchronously (snapshot to host memory, write in the
    background, as torch.distributed.checkpoint's ``async_save``) and each one stops training only
    for this many seconds, its measured overhead; the write itself overlaps with compute. Optimistic
    for the baseline: a checkpoint counts as committed when its snapshot is taken."""
    first_step_warmup_s: float = 0.0
    """Seconds the first step after an in-place recovery (``oobleck``) takes beyond a steady step
    (allocator and communicator warm-up). The step itself trains and is credited; only this excess
    is charged. Source: the runtime's measured ``first_step`` phase minus its steady step (notebook
    03); 0 until calibrated, since the cost model has no term for it."""
    fallback_checkpoint_interval_s: float = 6 * 3600.0
    """Checkpoint period of ``oobleck`` and ``bamboo``, which only read a checkpoint when redundancy
    is exhausted; 6 h is a common period for long jobs and keeps the steady overhead far below 1%."""
    bamboo_failover_s: float = 10.0
    """Seconds for Bamboo to switch a failed node's stage to its neighbour's redundant copy (detect,
    re-route, rebuild one pipeline's groups). An assumption of this model: no state moves, so it is
    of the order of Oobleck's detect + rebuild phases; calibrate it when measurements exist."""
    bamboo_bubble_hidden_fraction: float = 0.5
    """Fraction of the redundant forward computation Bamboo hides in pipeline bubbles; the rest
    lengthens every step. 0.5 is an assumption of this model (with forward = 1/3 of compute it
    makes steps 1/6 longer); set it from a measured Bamboo overhead when one is available."""

    def __post_init__(self) -> None:
        for name in ("fallback_checkpoint_interval_s", "bamboo_failover_s", "first_step_warmup_s"):
            check_number(name, getattr(self, name), positive=name.endswith("interval_s"), source="costs")
        if self.checkpoint_interval_s is not None:
            check_number("checkpoint_interval_s", self.checkpoint_interval_s, positive=True, source="costs")
        if self.checkpoint_async_overhead_s is not None:
            check_number(
                "checkpoint_async_overhead_s",
                self.checkpoint_async_overhead_s,
                positive=False,
                source="costs",
            )
        hidden = self.bamboo_bubble_hidden_fraction
        check_number("bamboo_bubble_hidden_fraction", hidden, positive=False, source="costs")
        if hidden > 1:
            raise ConfigError(f"costs: bamboo_bubble_hidden_fraction must be in [0, 1], got {hidden!r}")

    def to_dict(self) -> dict[str, Any]:
        """Flat mapping of every constant (the ``--costs`` file format)."""
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.name not in _NESTED}
        return {**self.recovery.to_dict(), **self.step.to_dict(), **values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "costs") -> SimCosts:
        """Build from a flat mapping; missing keys keep their defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        own = [item.name for item in fields(cls) if item.name not in _NESTED]
        shared = [item.name for item in fields(RecoveryConstants)]
        step = [item.name for item in fields(StepConstants)]
        data = check_keys(
            data, sorted(own + shared + step), source=source, expected="a JSON object of cost constants"
        )
        recovery = RecoveryConstants.from_dict({k: v for k, v in data.items() if k in shared}, source=source)
        steps = StepConstants.from_dict({k: v for k, v in data.items() if k in step}, source=source)
        with errors_from(source, strip="costs: "):
            return cls(recovery=recovery, step=steps, **{k: v for k, v in data.items() if k in own})

    @classmethod
    def load(cls, path: str | Path) -> SimCosts:
        """Read a ``--costs`` JSON file.

        Raises:
            ConfigError: missing or unreadable file, invalid JSON, unknown key or bad value.
        """
        path = Path(path)
        return cls.from_dict(read_json_file(path, "cost constants"), source=str(path))


def checkpoint_bytes(profile: ModelProfile) -> int:
    """Bytes of one checkpoint: every layer's parameters and optimizer state, once."""
    return sum(layer.transfer_bytes for layer in profile.layers)


def checkpoint_save_s(size_bytes: int, costs: SimCosts, writers: int) -> float:
    """Seconds to write a ``size_bytes`` checkpoint with ``writers`` nodes writing disjoint shares."""
    return size_bytes / (costs.recovery.checkpoint_save_bandwidth_bytes_per_s * writers)


def checkpoint_stall_s(size_bytes: int, costs: SimCosts, writers: int) -> float:
    """Seconds one checkpoint stops training: the whole write, or the async overhead when configured."""
    if costs.checkpoint_async_overhead_s is not None:
        return costs.checkpoint_async_overhead_s
    return checkpoint_save_s(size_bytes, costs, writers)


def restart_s(size_bytes: int, costs: SimCosts, readers: int) -> float:
    """Seconds of a restart-all: relaunch every worker, then read the checkpoint in parallel."""
    load_s = size_bytes / (costs.recovery.checkpoint_load_bandwidth_bytes_per_s * readers)
    return costs.recovery.restart_s + load_s


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young/Daly first-order optimal checkpoint period ``sqrt(2 * C * MTBF)`` (``inf`` without failures)."""
    if not math.isfinite(mtbf_s):
        return math.inf
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimal compute time between checkpoints (Daly, FGCS 2006, eq. 37).

    ``sqrt(2 d M) * (1 + sqrt(d / 2M) / 3 + (d / 2M) / 9) - d`` for ``d < 2M``, else ``M``; ``d`` is
    the checkpoint cost and ``M`` the mean time between interrupts. The restart time does not move
    the optimum (it scales the expected wall time by ``exp(R / M)``, see :func:`daly_goodput`).

    Args:
        checkpoint_s: Seconds one checkpoint stops training.
        mtbf_s: Mean seconds between interrupts of the job (``inf``: never).

    Returns:
        Seconds of training between checkpoints (``inf`` without failures).
    """
    if not math.isfinite(mtbf_s):
        return math.inf
    if checkpoint_s <= 0:
        return 0.0  # NOTE: a free checkpoint is best taken always; callers bound it by the write time.
    if checkpoint_s >= 2.0 * mtbf_s:
        return mtbf_s
    ratio = checkpoint_s / (2.0 * mtbf_s)
    return (
        math.sqrt(2.0 * checkpoint_s * mtbf_s) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - checkpoint_s
    )


def daly_goodput(interval_s: float, checkpoint_s: float, restart_s: float, mtbf_s: float) -> float:
    """Expected fraction of wall time that is kept training (Daly 2006, eq. 20, with restart ``R``).

    Daly's expected wall time for ``T`` seconds of work is ``M e^{R/M} (e^{(tau + d)/M} - 1) T / tau``
    under exponential interrupts; its inverse ratio is the goodput this returns.

    Args:
        interval_s: Training seconds between checkpoints (``tau``).
        checkpoint_s: Seconds one checkpoint stops training (``d``).
        restart_s: Seconds from an interrupt to training again (``R``).
        mtbf_s: Mean seconds between interrupts (``M``; ``inf``: never).

    Returns:
        A number in (0, 1].
    """
    if not math.isfinite(mtbf_s):
        return interval_s / (interval_s + checkpoint_s) if math.isfinite(interval_s) else 1.0
    if not math.isfinite(interval_s):
        return 0.0
    exponent = (interval_s + checkpoint_s) / mtbf_s + restart_s / mtbf_s
    # NOTE: expm1 keeps precision when M is far larger than tau + d (rare failures).
    wall = mtbf_s * math.exp(restart_s / mtbf_s) * math.expm1((interval_s + checkpoint_s) / mtbf_s)
    if exponent > 700:
        return 0.0
    return interval_s / wall
