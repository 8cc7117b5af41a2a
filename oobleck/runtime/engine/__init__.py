"""Execution engine: HF model adapters, 1F1B executor, gradient sync, AdamW, data, profiler, recovery.

The public entry is :class:`Engine` (one per rank); see its docstring for the recovery API the
elastic runtime drives.
"""

from oobleck.runtime.engine.adapters import ModelAdapter, build_adapter
from oobleck.runtime.engine.comm import Comm, CommunicationError, default_backend, default_device
from oobleck.runtime.engine.data import GlobalSampler, TokenDataset, load_dataset
from oobleck.runtime.engine.engine import Engine
from oobleck.runtime.engine.profiler import cached_profile, estimate_profile, measure_profile
from oobleck.runtime.engine.records import ReconfigureTiming, StepMetrics
from oobleck.runtime.engine.standalone import job_planner, job_profile, plan_for_world, rendezvous_store
from oobleck.runtime.engine.transfer import plan_transfers

__all__ = [
    "Comm",
    "CommunicationError",
    "Engine",
    "GlobalSampler",
    "ModelAdapter",
    "ReconfigureTiming",
    "StepMetrics",
    "TokenDataset",
    "build_adapter",
    "cached_profile",
    "default_backend",
    "default_device",
    "estimate_profile",
    "job_planner",
    "job_profile",
    "load_dataset",
    "measure_profile",
    "plan_for_world",
    "plan_transfers",
    "rendezvous_store",
]
