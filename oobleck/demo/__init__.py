"""``python -m oobleck.demo`` (``make demo``): plan at scale, then kill a node of a live job and recover.

Part 1 (:mod:`~oobleck.demo.paper`) runs the planning core and the simulator on their embedded
catalogue (GPT-3 175B on 32 H100 nodes losing one node; 24 h of random failures under every recovery
policy): it launches nothing. Part 2 (:mod:`~oobleck.demo.live`) starts a real job exactly as a user
would, ``python -m oobleck.runtime.master --hostfile examples/hosts.local4 --config <job>`` (four
local one-slot agents, gloo on CPU, the tiny GPT-2 of ``examples/tiny_gpt2_deep.yaml``: 2 MB per
device, so pipelines span 2-3 nodes), SIGKILLs one agent's process group after a chosen step, lets
the survivors finish every step, and prints the measured recovery timeline
(:mod:`~oobleck.demo.timeline`), the layers copied between survivors with their bytes
(:mod:`~oobleck.demo.copies`) and the new pipelines' templates, next to the planning core's
prediction for the same failure.

Assumptions:
    * The repository's ``examples/`` folder sits next to the installed package (editable install,
      as ``make`` does); the run directory defaults to ``runs/demo-<timestamp>`` under the current
      directory (``runs/`` is git-ignored).
    * :func:`oobleck.viz.live.record_failure_run` bounds every wait and kills every process it
      started, so the demo leaves nothing behind on success, error or timeout.
    * Pipelines before and after the failure are recomputed with the runtime's own planner
      (``job_planner`` on the job's profile, ``max_nodes`` = hostfile size): plans are
      deterministic, so these are the plans the workers ran.
"""

from oobleck.demo.command import build_parser, check_flags, main

__all__ = ["build_parser", "check_flags", "main"]
