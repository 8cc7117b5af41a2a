"""The master's job checks: HF config fields read from transformers' sources, heads, data paths."""

from __future__ import annotations

import sys

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.config import ModelConfig, job_config_from_dict
from oobleck.runtime.control.job_preflight import (
    ConfigFields,
    check_data_files,
    check_model_fields,
    config_fields,
)

FIELDS = ConfigFields(
    frozenset({"n_layer", "n_embd", "n_head", "num_hidden_layers", "hidden_size", "num_attention_heads"}),
    {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head"},
    {"n_layer": 12, "n_embd": 768, "n_head": 12},
)


def _model(**fields: object) -> ModelConfig:
    return ModelConfig(name="gpt2-custom", arch="gpt2", hf_config=dict(fields))


def test_unknown_field_names_the_closest_one() -> None:
    """A misspelt field is an error that suggests the field meant."""
    with pytest.raises(ConfigError, match=r"job.yaml: model.n_layr: .*did you mean n_layer\?"):
        check_model_fields(_model(n_layr=2), "job.yaml", FIELDS)


def test_alias_counts_as_its_field_for_the_width_check() -> None:
    """`hidden_size` (GPT-2's alias of n_embd) not divisible by the default 12 heads is refused."""
    with pytest.raises(ConfigError, match=r"n_head: 12 does not divide n_embd=100"):
        check_model_fields(_model(hidden_size=100), "job.yaml", FIELDS)
    check_model_fields(_model(hidden_size=96, num_hidden_layers=2), "job.yaml", FIELDS)


def test_presets_are_not_checked() -> None:
    """A preset (no HF fields of the user's) passes without reading any source."""
    check_model_fields(ModelConfig(name="tiny-gpt2", arch="gpt2"), "job.yaml", None)


def test_fields_are_read_from_the_installed_transformers_without_importing_it() -> None:
    """GPT-2's fields and aliases come from transformers' source; transformers and torch stay unimported."""
    loaded = set(sys.modules)
    fields = config_fields("gpt2")
    assert fields is not None
    assert {"n_layer", "n_embd", "num_hidden_layers", "tie_word_embeddings", "vocab_size"} <= fields.names
    assert fields.aliases["num_hidden_layers"] == "n_layer" and fields.defaults["n_head"] == 12
    llama = config_fields("llama")
    assert llama is not None and "num_key_value_heads" in llama.names
    assert not {"transformers", "torch"} & (set(sys.modules) - loaded)


def test_missing_hf_dataset_folder(tmp_path) -> None:
    """An `hf` data path that does not exist is refused naming data.path."""
    job = job_config_from_dict(
        {
            "model": "tiny-gpt2",
            "global_batch": 4,
            "steps": 2,
            "data": {"source": "hf", "path": str(tmp_path / "nope")},
        },
        source="job.yaml",
    )
    with pytest.raises(ConfigError, match=r"job.yaml: data.path: .*nope does not exist"):
        check_data_files(job, "job.yaml")
