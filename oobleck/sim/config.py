"""The simulator's configuration: one validated dataclass that the CLI and the notebooks fill in.

Assumptions:
    * Rates are per hour and durations in hours at this boundary (how operators state them);
      everything inside the simulator is float seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from oobleck.errors import ConfigError
from oobleck.sim.costs import SimCosts
from oobleck.sim.failures import FailureModel, RepairDistribution

POLICIES: tuple[str, ...] = ("oobleck", "checkpoint", "varuna", "bamboo")
"""Policy names in table order; ``oobleck`` first because the others are reported relative to it."""

MAX_NODES = 65_536
"""Largest ``--nodes``: four times the largest cluster ``benchmarks/sim_scale.py`` measures
(16,384). Per-node state (failure clocks, templates up to N nodes) grows linearly, so far larger
values only exhaust memory; the bound turns that into a one-line error."""


@dataclass(kw_only=True, slots=True)
class SimulationConfig:
    """Everything one simulated comparison depends on; ``simulate(config)`` is deterministic in it."""

    nodes: int = 32
    """Cluster size N; node ids are ``0 .. N-1``. Also the planner's largest pipeline."""
    fail_rate: float = 0.01
    """Independent node failures per node per hour. 0.01 (one failure every ~3 h on 32 nodes) is a
    stress setting in the range of the Oobleck/Bamboo evaluations; Meta's published MTTFs imply
    about 2.7e-4."""
    hours: float = 24.0
    """Simulated duration (hours of wall-clock training)."""
    model: str = "gpt3-6.7b"
    """Catalogue model name or a profile JSON path (``oobleck.planning.catalogue``)."""
    hardware: str = "a100-40"
    """Node type from the hardware catalogue (8 GPUs per node for the GPU entries)."""
    policies: tuple[str, ...] = POLICIES
    """Policies to compare, each on the same failure trace."""
    trace: str | None = None
    """CSV trace ``time_ms,add|remove,node<k>`` to replay instead of the synthetic failure model."""
    remove_every_minutes: float | None = None
    """The Oobleck paper's synthetic trace instead of the failure model: one node removed every this
    many minutes (seeded order) until ``remove_until_nodes`` remain; ``None``: off."""
    remove_until_nodes: int = 15
    """Nodes left when the periodic removals stop (the paper: 30 -> 15)."""
    allow_empty_trace: bool = False
    """Accept a replayed trace without any membership change (otherwise an error: an empty file is
    more often a mistake than an experiment)."""
    mtbf_hours: float | None = None
    """Cluster mean time between failures that checkpointing policies plan their period for (the
    expectation a operator would configure, never the replayed trace's own count); ``None``: from
    ``fail_rate`` and ``rack_fail_rate``."""
    repair_hours: float | None = None
    """Mean hours until a failed node comes back; ``None``: failed nodes stay down."""
    repair_distribution: RepairDistribution = "fixed"
    """``fixed`` or ``exponential`` repair times."""
    rack_size: int = 0
    """Nodes per rack for rack-correlated failures (0: none)."""
    rack_fail_rate: float = 0.0
    """Whole-rack failures per rack per hour."""
    seed: int = 0
    """Seed of the one random source the failure trace is drawn from."""
    fault_tolerance: int = 1
    """f: Oobleck keeps at least f + 1 pipelines and survives f simultaneous losses."""
    global_microbatches: int = 512
    """B: microbatches per step (512 x 2048 tokens ~ GPT-3's 1M-token batch)."""
    microbatch_size: int = 1
    """Samples per microbatch."""
    costs: SimCosts = field(default_factory=SimCosts)
    """Recovery and policy cost constants (``--costs`` file)."""

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes <= 0:
            raise ConfigError(f"--nodes must be a positive integer, got {self.nodes!r}")
        if self.nodes > MAX_NODES:
            raise ConfigError(
                f"--nodes must be at most {MAX_NODES:,} (the simulator's documented bound), "
                f"got {self.nodes:,}"
            )
        if self.remove_every_minutes is not None and self.trace is not None:
            raise ConfigError("--remove-every-minutes and --trace both give the trace; pass one of them")
        if self.mtbf_hours is not None and not (math.isfinite(self.mtbf_hours) and self.mtbf_hours > 0):
            raise ConfigError(f"--mtbf-hours must be a number > 0 (hours), got {self.mtbf_hours!r}")
        # NOTE: the failure model checks its own flags (rates, repair, rack size); build it once here
        # so a bad flag fails at once, before any planning.
        self.failure_model()
        if not math.isfinite(self.hours) or self.hours <= 0:
            raise ConfigError(f"--hours must be a number > 0, got {self.hours!r}")
        unknown = [name for name in self.policies if name not in POLICIES]
        if unknown or not self.policies:
            raise ConfigError(
                f"--policy {','.join(unknown) or '(none)'} is unknown; "
                f"choose from {', '.join(POLICIES)} or all"
            )
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"--policy lists a policy twice: {', '.join(self.policies)}")
        if self.rack_fail_rate > 0 and self.rack_size == 0:
            raise ConfigError("--rack-fail-rate needs --rack-size > 0 (nodes per rack)")
        if self.fault_tolerance < 0:
            raise ConfigError(f"--fault-tolerance must be >= 0, got {self.fault_tolerance}")
        for flag, value in (
            ("--global-microbatches", self.global_microbatches),
            ("--microbatch-size", self.microbatch_size),
        ):
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")

    def failure_model(self) -> FailureModel:
        """The synthetic failure process of these flags (unused when ``trace`` is set).

        Raises:
            ConfigError: a rate, repair or rack flag is out of range.
        """
        return FailureModel(
            node_rate_per_hour=self.fail_rate,
            repair_hours=self.repair_hours,
            repair_distribution=self.repair_distribution,
            rack_size=self.rack_size,
            rack_rate_per_hour=self.rack_fail_rate,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (the ``config`` object of ``--json``)."""
        data = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "costs"}
        data["policies"] = list(self.policies)
        data["costs"] = self.costs.to_dict()
        return data
