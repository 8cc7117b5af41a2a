"""How a master listens and judges liveness (its settings, apart from the shell that uses them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True, slots=True)
class MasterConfig:
    """Where the master listens and how it judges liveness."""

    run_dir: Path
    """Holds master.json, job.json, agents.json, agent logs, metrics.jsonl, errors/."""
    host: str = "127.0.0.1"
    """Bind address of the control server and the store; loopback unless a user token is configured."""
    port: int = 0
    """Control port; 0 picks a free one (written to master.json; a resumed master reuses it)."""
    heartbeat_interval_s: float = 0.5
    """Agents send a heartbeat this often."""
    missed_heartbeats: int = 3
    """An agent silent for this many intervals of master-observed time is declared dead (1.5 s)."""
    register_timeout_s: float = 120.0
    """Longest to wait for the expected number of agents before the job fails."""
    resume_grace_s: float = 30.0
    """A resumed master waits this long for members to re-register before declaring them lost
    (below the workers' 120 s barrier bound, so survivors of a loss meanwhile are still waiting)."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0 or self.missed_heartbeats < 1:
            raise ValueError("heartbeat_interval_s must be > 0 and missed_heartbeats >= 1")
