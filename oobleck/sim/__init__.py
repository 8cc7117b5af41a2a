"""SimPy cluster simulator: how much training N failing nodes deliver under each fault-tolerance policy.

Use :func:`simulate` with a :class:`SimulationConfig`; every policy replays the same failure trace
and is priced by the planning core's cost model. ``python -m oobleck.sim`` is the command line.
"""

from oobleck.sim.config import POLICIES, SimulationConfig
from oobleck.sim.costs import SimCosts
from oobleck.sim.failures import ClusterEvent, FailureModel, FailureTrace, generate_trace, read_trace
from oobleck.sim.metrics import PolicyResult, TimelinePoint
from oobleck.sim.simulation import SimulationResult, simulate

__all__ = [
    "POLICIES",
    "ClusterEvent",
    "FailureModel",
    "FailureTrace",
    "PolicyResult",
    "SimCosts",
    "SimulationConfig",
    "SimulationResult",
    "TimelinePoint",
    "generate_trace",
    "read_trace",
    "simulate",
]
