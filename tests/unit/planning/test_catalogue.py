"""Tests for the analytic profiles of catalogue models: cost formulas, determinism, profile lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile, resolve_profile
from oobleck.planning.hardware import get_hardware
from oobleck.planning.shapes import get_model_shape

H100 = get_hardware("h100")


def test_profile_has_embedding_blocks_head_in_order() -> None:
    """A profile lists embedding, one layer per block, then the head, with the block names indexed."""
    profile = analytic_profile("gpt3-175b", H100)
    assert profile.num_layers == 96 + 2
    assert [layer.kind for layer in profile.layers] == ["embedding"] + ["block"] * 96 + ["head"]
    assert profile.layers[1].name == "block.0"
    assert profile.layers[96].name == "block.95"
    assert profile.device == "h100"
    assert profile.sequence_length == 2048


def test_tied_head_records_the_embedding_and_counts_the_shared_matrix() -> None:
    """GPT-2's head is tied to layer 0 and holds its own copy of the token embedding matrix."""
    shape = get_model_shape("gpt2")
    profile = analytic_profile(shape, H100)
    head = profile.layers[-1]
    assert head.tied_to == 0
    assert head.param_bytes >= shape.vocab * shape.hidden * 2
    assert profile.layers[0].param_bytes >= shape.vocab * shape.hidden * 2


def test_untied_models_have_no_tied_layer() -> None:
    """LLaMA's head has its own weights, so no layer records tied_to."""
    profile = analytic_profile("llama2-7b", H100)
    assert all(layer.tied_to is None for layer in profile.layers)


def test_block_costs_follow_the_stated_formulas() -> None:
    """A block's forward time, backward time, state and activation bytes match the documented formulas."""
    shape = get_model_shape("gpt3-6.7b")
    b, s, h, a = 2, shape.seq_len, shape.hidden, shape.heads
    block = analytic_profile(shape, H100, microbatch_size=b).layers[1]
    flops = (2 * shape.block_params + 4 * s * h) * b * s
    assert block.forward_s == pytest.approx(flops / H100.achieved_flops)
    assert block.backward_s == pytest.approx(2 * block.forward_s)
    assert block.param_bytes == 2 * shape.block_params
    assert block.grad_bytes == 2 * shape.block_params
    assert block.optimizer_bytes == 12 * shape.block_params
    assert block.activation_bytes == s * b * h * (34 + 5 * a * s // h)
    assert block.output_bytes == s * b * h * 2


def test_float32_uses_four_byte_weights_and_eight_byte_adam_state() -> None:
    """In float32 a parameter costs 4 B weights, 4 B gradients, 8 B moments, and activations double."""
    shape = get_model_shape("gpt2")
    half = analytic_profile(shape, H100).layers[1]
    full = analytic_profile(shape, H100, dtype="float32").layers[1]
    assert full.param_bytes == 4 * shape.block_params
    assert full.grad_bytes == 4 * shape.block_params
    assert full.optimizer_bytes == 8 * shape.block_params
    assert full.activation_bytes == 2 * half.activation_bytes


def test_head_keeps_float32_logits_and_sends_nothing() -> None:
    """The head's activations include s*b*V float32 logits for the loss and its output is never sent."""
    shape = get_model_shape("llama3-8b")
    head = analytic_profile(shape, H100).layers[-1]
    assert head.activation_bytes >= shape.seq_len * shape.vocab * 4
    assert head.output_bytes == 0


def test_shorter_sequence_scales_time_and_memory_down() -> None:
    """Overriding the sequence length lowers per-microbatch time and activations and is recorded."""
    full = analytic_profile("gpt2", H100)
    short = analytic_profile("gpt2", H100, sequence_length=256)
    assert short.sequence_length == 256
    assert short.layers[1].forward_s < full.layers[1].forward_s / 4 + 1e-12
    assert short.layers[1].activation_bytes < full.layers[1].activation_bytes
    assert short.config_fingerprint != full.config_fingerprint


def test_profiles_are_deterministic() -> None:
    """The same inputs give an equal profile, fingerprint included."""
    assert analytic_profile("llama2-70b", H100) == analytic_profile("llama2-70b", H100)


def test_tiny_model_for_the_runtime_exists() -> None:
    """tiny-gpt2 has 4 blocks of width 64, so a profile has 6 layers."""
    shape = get_model_shape("tiny-gpt2")
    assert (shape.num_blocks, shape.hidden, shape.heads, shape.seq_len) == (4, 64, 4, 64)
    assert analytic_profile(shape, get_hardware("cpu")).num_layers == 6


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"dtype": "int8"}, r"dtype 'int8'.*bfloat16"),
        ({"microbatch_size": 0}, r"microbatch_size must be > 0, got 0"),
        ({"sequence_length": 4096}, r"sequence_length must be in 1..1024, got 4096"),
    ],
)
def test_bad_profile_arguments_raise_config_error(kwargs: dict[str, object], pattern: str) -> None:
    """Unsupported dtypes, empty microbatches and sequences beyond the position table are rejected."""
    with pytest.raises(ConfigError, match=pattern):
        analytic_profile("gpt2", H100, **kwargs)  # type: ignore[arg-type]


def test_rotary_models_accept_longer_sequences() -> None:
    """A model without a learned position table accepts a sequence longer than its default."""
    assert analytic_profile("llama2-7b", H100, sequence_length=8192).sequence_length == 8192


def test_resolve_profile_by_name_and_by_file(tmp_path: Path) -> None:
    """resolve_profile builds a catalogue profile by name and loads an equal one back from its JSON."""
    profile = resolve_profile("gpt2", H100, microbatch_size=2)
    assert profile == analytic_profile("gpt2", H100, microbatch_size=2)
    path = tmp_path / "gpt2.json"
    profile.save(path)
    assert resolve_profile(str(path), H100, microbatch_size=2) == profile


def test_resolve_profile_rejects_microbatch_mismatch(tmp_path: Path) -> None:
    """A profile file made for another microbatch size is rejected, because its times would be wrong."""
    path = tmp_path / "p.json"
    analytic_profile("gpt2", H100, microbatch_size=4).save(path)
    with pytest.raises(ConfigError, match="microbatch_size=4"):
        resolve_profile(str(path), H100, microbatch_size=1)


def test_resolve_profile_unknown_name_suggests_json() -> None:
    """An unknown name that is not a file names the model, the catalogue and the .json alternative."""
    with pytest.raises(ConfigError, match=r"unknown model 'nope'; choose one of: .*or give a profile \.json"):
        resolve_profile("nope", H100)


def test_resolve_profile_missing_json_names_the_file(tmp_path: Path) -> None:
    """A path ending in .json that does not exist raises ConfigError naming the path."""
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match="profile file not found"):
        resolve_profile(str(missing), H100)
