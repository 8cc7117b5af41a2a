"""The master's torch-free job profile equals the workers' torch one, layer for layer."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from oobleck.runtime.config import JobConfig, ModelConfig, OptimConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.standalone import job_profile as workers_job_profile
from oobleck.runtime.job_plan import job_profile, model_shape
from oobleck.runtime.model_presets import PRESETS

#: Field sets beyond the presets that change the layer shapes (biases, projections, aliases).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("gpt2", "custom", {"n_layer": 3, "n_embd": 48, "n_head": 4, "n_inner": 80, "n_positions": 64}),
    ("gpt2", "custom", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}),
    ("gpt2", "custom", {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 1000}),
    (
        "llama",
        "custom",
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
        },
    ),
    (
        "llama",
        "custom",
        {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
    ),
    (
        "opt",
        "custom",
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "ffn_dim": 96,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 32,
            "enable_bias": False,
            "layer_norm_elementwise_affine": False,
        },
    ),
]


def _models() -> list[ModelConfig]:
    presets = [
        ModelConfig(name=name, arch="opt" if "opt" in name else "llama" if "llama" in name else "gpt2")
        for name in PRESETS
    ]
    return presets + [ModelConfig(name=name, arch=arch, hf_config=fields) for arch, name, fields in VARIANTS]


@pytest.mark.parametrize("model", _models(), ids=lambda m: f"{m.arch}-{m.name}-{sorted(m.hf_config)[:2]}")
def test_parameter_counts_equal_torch(model: ModelConfig) -> None:
    """Per-layer parameter counts from the fields equal those of the torch layers the adapter builds."""
    adapter = build_adapter(model)
    shape = model_shape(model)
    assert shape is not None
    assert shape.parameter_counts == tuple(adapter.parameter_count(i) for i in range(adapter.num_layers))
    assert (shape.hidden_size, shape.vocab_size) == (adapter.hidden_size, adapter.vocab_size)
    assert shape.tied == bool(adapter.tied)


MODES: list[dict[str, Any]] = [
    {},
    {"precision": "bf16"},
    {"precision": "fp16", "activation_checkpointing": True},
    {"optim": OptimConfig(exact_accumulation=True)},
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(sorted(m)) or "default")
@pytest.mark.parametrize("name", ["tiny-gpt2-tied", "tiny-llama", "tiny-opt"])
def test_job_profile_equals_the_workers_profile(name: str, mode: dict[str, Any]) -> None:
    """The master's torch-free profile equals the workers' ``job_profile`` in each precision and mode."""
    model = ModelConfig(name=name, arch="opt" if "opt" in name else "llama" if "llama" in name else "gpt2")
    job = JobConfig(
        model=model, global_batch=8, microbatch_size=2, steps=1, device_memory_bytes=1 << 24, **mode
    )
    mine = job_profile(job)
    assert mine is not None
    theirs = workers_job_profile(job, build_adapter(model))
    assert mine.layers == theirs.layers
    assert (mine.device, mine.dtype, mine.microbatch_size, mine.sequence_length) == (
        theirs.device,
        theirs.dtype,
        theirs.microbatch_size,
        theirs.sequence_length,
    )


def test_pretrained_model_is_not_resolved() -> None:
    """A pretrained model's fields are in its checkpoint, so the torch-free path declines (None)."""
    model = ModelConfig(name="p", arch="gpt2", pretrained="/nonexistent/folder")
    assert model_shape(model) is None


def test_plan_check_imports_no_torch() -> None:
    """Profiling and assessing a job on the master imports neither torch nor transformers."""
    code = (
        "import sys\n"
        "from oobleck.runtime.config import JobConfig, ModelConfig\n"
        "from oobleck.runtime.job_plan import job_profile\n"
        "from oobleck.runtime.plan_fit import assess\n"
        "job = JobConfig(model=ModelConfig(name='tiny-llama', arch='llama'), global_batch=4, steps=1)\n"
        "assert assess(job, job_profile(job), 2, 1).fits\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
