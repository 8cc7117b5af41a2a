"""Pretrained HF folders load into the adapters' layers: per-stage lazy reads, HF's logits, named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from oobleck.errors import ConfigError
from oobleck.runtime.config import ModelConfig, job_config_from_dict
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.pretrained import PretrainedWeights

VOCAB = 300


def _hf_config(arch: str):
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if arch == "gpt2":  # tied head, dropout on in the file (the adapter turns it off)
        return GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64)
    if arch == "llama":
        return LlamaConfig(
            vocab_size=VOCAB,
            num_hidden_layers=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    return OPTConfig(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        hidden_size=32,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=16,  # project_in / project_out exist
    )


def save_tiny(arch: str, folder: Path, *, shard: bool = False, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny HF causal LM saved with save_pretrained (nothing downloaded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(arch))
    model.save_pretrained(str(folder), max_shard_size="40KB" if shard else "5GB")
    return model


# A heterogeneous plan of a 4-layer model: one 1-stage pipeline and one 3-stage pipeline.
PLAN = (((0, 4),), ((0, 1), (1, 3), (3, 4)))


@pytest.mark.parametrize(("arch", "shard"), [("gpt2", False), ("llama", True), ("opt", False)])
def test_stages_read_only_their_tensors_and_match_hf_logits(tmp_path: Path, arch: str, shard: bool) -> None:
    """Each stage reads only its layers' tensors, and chained the stages give HF's logits and loss."""
    from transformers import AutoModelForCausalLM

    save_tiny(arch, tmp_path, shard=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == shard
    if shard:
        assert (
            len(
                set(
                    json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values()
                )
            )
            > 1
        )
    model = ModelConfig(name="m", arch=arch, pretrained=str(tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids[:, :-1]).logits
    all_names = set(PretrainedWeights(tmp_path).weight_map)
    for pipeline in PLAN:
        hidden, read = ids[:, :-1], []
        for first, end in pipeline:
            adapter = build_adapter(model)  # NOTE: one rank: its own adapter and file handles
            assert adapter.num_layers == 4
            layers = [adapter.build_layer(i, seed=0).eval() for i in range(first, end)]
            read.append(set(adapter.weights.read_names))
            with torch.no_grad():
                for layer in layers:
                    hidden = layer(hidden)
        torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
        loss = functional.cross_entropy(hidden.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        with torch.no_grad():  # NOTE: causal: HF's loss on all 17 ids scores the same 16 predictions.
            hf_loss = hf(input_ids=ids, labels=ids).loss
        torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-6)
        embedding = {"gpt2": "transformer.wte.weight", "opt": "model.decoder.embed_tokens.weight"}
        tied = {embedding[arch]} if hf.config.tie_word_embeddings else set()  # first and last stage
        for a in read:
            for b in read:
                assert a is b or not (a & b) - tied, "two stages read the same untied tensor"
        assert set().union(*read) == all_names


def test_tied_head_reads_the_embedding_tensor(tmp_path: Path) -> None:
    """A tied GPT-2 head has no lm_head.weight in the file: it is read from transformer.wte.weight."""
    save_tiny("gpt2", tmp_path)
    weights = PretrainedWeights(tmp_path)
    assert "lm_head.weight" not in weights.weight_map
    adapter = build_adapter(ModelConfig(name="m", arch="gpt2", pretrained=str(tmp_path)))
    head, embedding = adapter.build_layer(3, seed=0), adapter.build_layer(0, seed=0)
    assert torch.equal(head.lm_head.weight, embedding.wte.weight)
    assert adapter.tied and adapter.hf_config.resid_pdrop == 0.0


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    """A config.json whose sizes disagree with the weights fails with the tensor's name and both shapes."""
    save_tiny("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    adapter = build_adapter(ModelConfig(name="m", arch="llama", pretrained=str(tmp_path)))
    with pytest.raises(
        ConfigError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape \[\d+, \d+\]"
    ):
        adapter.build_layer(1, seed=0)


def test_missing_weights_and_bin_only_folder_are_config_errors(tmp_path: Path) -> None:
    """A folder with only pickled weights is refused by name, before any tensor is read."""
    save_tiny("opt", tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        build_adapter(ModelConfig(name="m", arch="opt", pretrained=str(tmp_path)))


def test_job_config_infers_arch_and_resolves_relative_path(tmp_path: Path) -> None:
    """``model: {pretrained: DIR}`` takes the architecture from config.json; a missing folder is one line."""
    save_tiny("opt", tmp_path / "ckpt")
    job = job_config_from_dict(
        {"model": {"pretrained": str(tmp_path / "ckpt")}, "global_batch": 2, "steps": 1}
    )
    assert (job.model.arch, job.model.name, job.model.pretrained) == ("opt", "ckpt", str(tmp_path / "ckpt"))
    with pytest.raises(
        ConfigError, match=r"job config: model\.pretrained: .*nowhere/config\.json unreadable"
    ):
        job_config_from_dict(
            {"model": {"pretrained": str(tmp_path / "nowhere")}, "global_batch": 2, "steps": 1}
        )
