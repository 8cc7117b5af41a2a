"""Gradient sync of a one-pipeline stage: gradients reach AdamW as backward left them, with no copy."""

from __future__ import annotations

import torch
import torch.distributed as dist

from oobleck.runtime.config import job_config_from_dict
from oobleck.runtime.engine import Engine
from oobleck.runtime.engine.standalone import plan_for_world
from oobleck.runtime.engine.topology import Topology

JOB = {
    "model": "tiny-gpt2",
    "data": {"source": "pydoc", "sequence_length": 8},
    "global_batch": 4,
    "microbatch_size": 2,
    "steps": 2,
    "optim": {"lr": 1e-3, "grad_clip": 0.0, "exact_accumulation": False},
    "seed": 5,
}


def test_one_pipeline_gradients_are_not_copied_through_a_flat_buffer() -> None:
    """Without a replica to sum with, each parameter keeps the gradient tensor backward produced."""
    job = job_config_from_dict(JOB, source="test")
    store = dist.HashStore()
    engine = Engine(job, node=0, device=torch.device("cpu"))
    seen: list[bool] = []
    try:
        engine.configure(plan_for_world(job, engine.adapter, 1, store=store, rank=0), 0, {0: 0}, store)
        assert not engine.adapter.tied, "the claim is about untied parameters"
        params = [p for state in engine.layers.values() for _, p in state.params()]
        sync = engine._sync_gradients

        def spy(topology: Topology) -> None:
            before = [p.grad for p in params]
            sync(topology)
            seen.extend(p.grad is g and g is not None for p, g in zip(params, before, strict=True))

        engine._sync_gradients = spy  # type: ignore[method-assign]  # NOTE: observe one step's sync.
        metrics = engine.train_step(0)
    finally:
        engine.close()
    assert seen and all(seen)
    assert metrics.grad_norm > 0
