"""Every constant a simulated recovery costs, in one place a user can override with ``--costs``.

The planning core's :class:`~oobleck.planning.recovery.RecoveryConstants` prices Oobleck's own
reconfiguration and the checkpoint-restart fallback (restart time, checkpoint save/load bandwidth)
and its :class:`~oobleck.planning.step_time.StepConstants` say how long a plan's steps really take
(calibrated from measured runs; by default the planner's own price); :class:`SimCosts` adds the
per-policy constants of the baselines. A ``--costs`` JSON file is one flat object whose keys are
fields of any of the three classes; an unknown key is an error, never silently ignored.

Assumptions:
    * A checkpoint holds every layer's parameters and optimizer state once; the nodes of one
      pipeline write (and, after a restart, read) disjoint parts of it in parallel, each at the
      per-node bandwidth of ``RecoveryConstants``.
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
    """Checkpoint period of ``checkpoint`` and ``varuna``; ``None`` picks Young/Daly
    ``sqrt(2 * C * MTBF)`` from the checkpoint cost ``C`` and the cluster's mean time between failures."""
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
        for name in ("fallback_checkpoint_interval_s", "bamboo_failover_s"):
            check_number(name, getattr(self, name), positive=name.endswith("interval_s"), source="costs")
        if self.checkpoint_interval_s is not None:
            check_number("checkpoint_interval_s", self.checkpoint_interval_s, positive=True, source="costs")
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


def restart_s(size_bytes: int, costs: SimCosts, readers: int) -> float:
    """Seconds of a restart-all: relaunch every worker, then read the checkpoint in parallel."""
    load_s = size_bytes / (costs.recovery.checkpoint_load_bandwidth_bytes_per_s * readers)
    return costs.recovery.restart_s + load_s


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young/Daly first-order optimal checkpoint period ``sqrt(2 * C * MTBF)`` (``inf`` without failures)."""
    if not math.isfinite(mtbf_s):
        return math.inf
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)
