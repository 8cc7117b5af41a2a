"""The adapters' layer chains compute exactly what the HuggingFace models compute."""

from __future__ import annotations

import pytest
import torch

from oobleck.runtime.config import ModelConfig
from oobleck.runtime.engine.adapters import build_adapter


def _hf_model(adapter):
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, OPTForCausalLM

    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "opt": OPTForCausalLM}[adapter.arch]
    return cls(adapter.hf_config).eval()


def _hf_name(arch: str, layer: int, last: int, name: str) -> str:
    """Map an adapter parameter name to the HF model's parameter name."""
    if arch == "gpt2":
        if layer == 0:
            return f"transformer.{name}"
        if layer == last:
            return name if name.startswith("lm_head") else name.replace("norm", "transformer.ln_f")
        return name.replace("block", f"transformer.h.{layer - 1}")
    base = "model" if arch == "llama" else "model.decoder"
    if layer == 0:
        return f"{base}.{name}"
    if layer == last:
        if name.startswith("lm_head"):
            return name
        norm = "norm" if arch == "llama" else "final_layer_norm"
        return name.replace("norm", f"{base}.{norm}").replace("proj", f"{base}.project_out")
    return name.replace("block", f"{base}.layers.{layer - 1}")


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-gpt2-tied", "tiny-llama", "tiny-opt"])
def test_layer_chain_matches_hf_model(preset: str) -> None:
    """Running the adapter's layers in order gives the HF model's logits for the same weights."""
    adapter = build_adapter(ModelConfig(name=preset, arch=preset.split("-")[1]))
    layers = [adapter.build_layer(i, seed=7).eval() for i in range(adapter.num_layers)]
    model = _hf_model(adapter)
    hf_params = dict(model.named_parameters(remove_duplicate=False))
    last = adapter.num_layers - 1
    with torch.no_grad():
        for index, layer in enumerate(layers):
            for name, param in layer.named_parameters():
                hf_params[_hf_name(adapter.arch, index, last, name)].copy_(param)
    ids = torch.randint(0, adapter.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = ids
        for layer in layers:
            hidden = layer(hidden)
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)


def test_replicas_are_bit_identical_and_tied_copies_equal() -> None:
    """Building a layer twice gives equal weights, and a tied head copy equals the embedding."""
    adapter = build_adapter(ModelConfig(name="tiny-gpt2-tied", arch="gpt2"))
    last = adapter.num_layers - 1
    first, again = adapter.build_layer(1, seed=3), adapter.build_layer(1, seed=3)
    for (name, a), (_, b) in zip(first.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    head, embedding = adapter.build_layer(last, seed=3), adapter.build_layer(0, seed=3)
    assert torch.equal(head.lm_head.weight, embedding.wte.weight)
    other = adapter.build_layer(1, seed=4)
    assert not torch.equal(first.block.attn.c_attn.weight, other.block.attn.c_attn.weight)
