"""Real torch.distributed runtime: the execution engine (``engine/``) and the elastic control plane.

Importing this package imports no torch: ``config`` is plain data, the engine and the control plane
are imported where they are used.
"""

from oobleck.runtime.config import JobConfig, load_job_config

__all__ = ["JobConfig", "load_job_config"]
