"""Experimental policies: ideas beyond the paper's anchors, never imported by the core simulator.

Pass them to :func:`oobleck.sim.simulate` through ``extra_policies``, e.g.
``simulate(config, extra_policies={"recycle": recycle_factory})``.
"""

from oobleck.sim.policies.experimental.recycle import RecyclePolicy, recycle_factory

__all__ = ["RecyclePolicy", "recycle_factory"]
