"""The profiler measures every layer and its cache is used only on an exact key match."""

from __future__ import annotations

import json

import pytest
import torch

from oobleck.planning.hardware import get_hardware
from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.profiler import cached_profile, estimate_profile, measure_profile

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adapter():
    return build_adapter(
        ModelConfig(name="tiny", arch="gpt2", hf_config={"n_layer": 1, "n_embd": 32, "n_head": 2})
    )


def test_measured_profile_has_every_layer(adapter) -> None:
    """A measured profile lists embedding, blocks and head with positive times and AdamW-sized state."""
    profile = measure_profile(adapter, microbatch_size=1, sequence_length=8, device=CPU, warmup=1, repeats=2)
    assert [layer.kind for layer in profile.layers] == ["embedding", "block", "head"]
    assert all(layer.forward_s > 0 and layer.backward_s > 0 for layer in profile.layers)
    block = profile.layers[1]
    assert block.param_bytes == 4 * adapter.parameter_count(1)
    assert block.optimizer_bytes == 2 * block.param_bytes
    assert block.output_bytes == 1 * 8 * 32 * 4 and block.activation_bytes > block.output_bytes
    assert profile.layers[2].tied_to == 0 and profile.layers[2].output_bytes == 0


def test_cache_hit_only_on_exact_key(adapter, tmp_path) -> None:
    """Same key: the cached file is returned as is; any other key or a tampered file is re-measured."""
    kwargs = {"sequence_length": 8, "device": CPU, "cache_dir": tmp_path}
    first = cached_profile(adapter, microbatch_size=1, **kwargs)
    assert cached_profile(adapter, microbatch_size=1, **kwargs) == first
    other = cached_profile(adapter, microbatch_size=2, **kwargs)
    assert other.microbatch_size == 2 and len(list(tmp_path.glob("*.json"))) == 2
    path = next(p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["microbatch_size"] == 1)
    data = json.loads(path.read_text())
    data["sequence_length"] = 16
    path.write_text(json.dumps(data))
    again = cached_profile(adapter, microbatch_size=1, **kwargs)
    assert again.sequence_length == 8 and again != first
    wider = build_adapter(
        ModelConfig(name="tiny", arch="gpt2", hf_config={"n_layer": 1, "n_embd": 64, "n_head": 2})
    )
    assert cached_profile(wider, microbatch_size=1, **kwargs).config_fingerprint != first.config_fingerprint
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_analytic_profile_matches_layers(adapter) -> None:
    """The analytic estimate has the same layers and parameter bytes as the real modules."""
    profile = estimate_profile(adapter, microbatch_size=2, sequence_length=8, hardware=get_hardware("cpu"))
    assert profile.num_layers == adapter.num_layers == 3
    for index, layer in enumerate(profile.layers):
        assert layer.param_bytes == 4 * adapter.parameter_count(index)
        assert layer.backward_s == pytest.approx(2 * layer.forward_s)
