"""The planning core's memory model counts the state bytes the engine really allocates for each stage."""

from __future__ import annotations

import pytest
import torch

from oobleck.planning.memory import layer_state_bytes
from oobleck.runtime.config import job_config_from_text
from oobleck.runtime.engine import build_adapter, job_planner, job_profile
from oobleck.runtime.engine.optim import LayerState

JOB = (
    "model: {model}\nglobal_batch: 8\nmicrobatch_size: 2\nsteps: 1\nfault_tolerance: 1\n"
    "device_memory_bytes: {memory}\nprecision: {precision}\noptim: {{exact_accumulation: {exact}}}\n"
)


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(
    ("model", "precision", "exact", "memory"),
    [
        ("tiny-gpt2", "fp32", True, 3_000_000),
        ("tiny-gpt2", "bf16", False, 3_000_000),
        ("tiny-llama", "fp16", False, 1_500_000),
    ],
)
def test_every_stage_of_a_plan_holds_the_modelled_state_bytes(
    model: str, precision: str, exact: bool, memory: int
) -> None:
    """Each stage of a multi-stage plan: its params, grads (+float64 sums) and moments equal the model."""
    text = JOB.format(model=model, memory=memory, precision=precision, exact=str(exact).lower())
    job = job_config_from_text(text, source="job.yaml")
    adapter = build_adapter(job.model)
    profile = job_profile(job, adapter)
    plan = job_planner(job, profile, 4).plan(range(4))
    stages = [stage for pipeline in plan.pipelines for stage in pipeline.template.stages]
    assert len(stages) > len(plan.pipelines), "the test wants pipelines of several stages"
    for stage in stages:
        layers = range(stage.first_layer, stage.end_layer)
        states = [LayerState(index=i, module=adapter.build_layer(i, job.seed)) for i in layers]
        for state in states:
            state.ensure_moments()
            for _, param in state.params():
                param.grad = torch.ones_like(param)
            if exact:
                state.accumulate_grads()  # the float64 sums, then the step's fp32 gradient again
                for _, param in state.params():
                    param.grad = torch.ones_like(param)
        params = _nbytes([p for s in states for _, p in s.params()])
        grads = _nbytes([p.grad for s in states for _, p in s.params() if p.grad is not None])
        grads += _nbytes([g for s in states for g in s.grad_sum.values()])
        moments = _nbytes([m for s in states for m in (*s.exp_avg.values(), *s.exp_avg_sq.values())])
        modelled = [profile.layers[i] for i in layers]
        assert params == sum(layer.param_bytes for layer in modelled)
        assert grads == sum(layer.grad_bytes for layer in modelled)
        assert moments == sum(layer.optimizer_bytes for layer in modelled)


def test_exact_accumulation_adds_eight_bytes_per_parameter() -> None:
    """Exact mode's float64 sums are 8 more bytes of gradient state per parameter, nothing else."""
    plain, exact = layer_state_bytes(1000), layer_state_bytes(1000, exact_accumulation=True)
    assert (plain.param_bytes, plain.grad_bytes, plain.optimizer_bytes) == (4000, 4000, 8000)
    assert exact.total_bytes - plain.total_bytes == 8000 and exact.grad_bytes == 12000


def test_checkpointing_and_precision_change_only_activations() -> None:
    """Activation checkpointing shrinks saved bytes per microbatch, so it lowers n0 under a tight budget."""
    text = JOB.format(model="tiny-llama", memory=2_000_000, precision="fp16", exact="false")
    job = job_config_from_text(text, source="job.yaml")
    adapter = build_adapter(job.model)
    full = job_profile(job, adapter)
    job.activation_checkpointing = True
    recompute = job_profile(job, adapter)
    job.precision = "fp32"
    single = job_profile(job, adapter)
    for a, b in zip(full.layers, recompute.layers, strict=True):
        assert a.state_bytes == b.state_bytes and b.activation_bytes < a.activation_bytes
    assert [a.state_bytes for a in single.layers] == [a.state_bytes for a in full.layers]
    job.activation_checkpointing = False
    assert job_planner(job, recompute, 8).min_nodes < job_planner(job, full, 8).min_nodes
