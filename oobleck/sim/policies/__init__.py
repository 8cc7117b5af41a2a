"""Fault-tolerance policies the simulator compares, one module each.

``oobleck`` reconfigures from pipeline templates; ``checkpoint``, ``varuna`` and ``bamboo`` are the
baselines of the Oobleck paper. Experimental policies live in ``policies/experimental/`` and are
never imported from here.
"""

from oobleck.sim.policies.bamboo import BambooPolicy
from oobleck.sim.policies.checkpoint import CheckpointPolicy
from oobleck.sim.policies.homogeneous import HomogeneousPlanner
from oobleck.sim.policies.oobleck import OobleckPolicy
from oobleck.sim.policies.varuna import VarunaPolicy

__all__ = ["BambooPolicy", "CheckpointPolicy", "HomogeneousPlanner", "OobleckPolicy", "VarunaPolicy"]
