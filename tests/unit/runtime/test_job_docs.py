"""Tests for oobleck.runtime.job_docs: docs/job.md is current, complete, and its examples are valid."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from oobleck.runtime import job_docs
from oobleck.runtime.config import JobConfig, job_config_from_text, load_job_config
from oobleck.runtime.model_presets import PRESETS

REPO = Path(__file__).resolve().parents[3]


def test_committed_job_reference_is_current() -> None:
    """docs/job.md equals what the generator renders from the config dataclasses today."""
    committed = (REPO / "docs" / "job.md").read_text(encoding="utf-8")
    assert committed == job_docs.render(), f"docs/job.md is stale: run `{job_docs.COMMAND}` and commit it"


def test_every_job_key_has_a_docstring() -> None:
    """Every field of the job config and of the sections it composes has a docstring under it."""
    missing = job_docs.missing_docs()
    assert not missing, (
        f'job config fields without a docstring: {", ".join(missing)}; add a \'"""..."""\' line under '
        f"each (meaning, unit, why this default), then run `{job_docs.COMMAND}`"
    )


@dataclasses.dataclass(kw_only=True)
class _Section:
    """A section with one documented and one undocumented field."""

    documented: int = 1
    """Has its docstring."""
    bare: str = "x"


@dataclasses.dataclass(kw_only=True)
class _Root:
    """A root composing the section."""

    inner: _Section = dataclasses.field(default_factory=_Section)
    """The section."""
    count: int
    """A required count."""


def test_an_undocumented_field_is_named_and_rendered_with_a_placeholder() -> None:
    """A field without a docstring is reported by class and name, and rendering still succeeds."""
    assert job_docs.missing_docs(_Root) == ["_Section.bare"]
    text = job_docs.render(_Root)
    assert f"| `inner.bare` | string | `x` | {job_docs.UNDOCUMENTED} |" in text
    assert "| `count` | integer | **required** | A required count. |" in text
    assert "| `inner` | mapping | see `inner` below | The section. |" in text


def test_every_config_field_is_a_row() -> None:
    """Each field of every section appears as a key row (model's HF fields as ``model.<field>``)."""
    text = job_docs.render()
    for prefix, cls in job_docs.sections():
        for item in dataclasses.fields(cls):
            key = "model.<field>" if (prefix, item.name) == ("model.", "hf_config") else prefix + item.name
            assert f"| `{key}` |" in text, key


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


def test_worked_examples_are_valid_job_files() -> None:
    """Every YAML example in docs/job.md loads through the job config loader."""
    blocks = _yaml_blocks(job_docs.render())
    assert len(blocks) == len(job_docs.EXAMPLES) >= 3
    for block in blocks:
        assert isinstance(job_config_from_text(block, source="example.yaml"), JobConfig)


def test_deep_example_is_the_shipped_deep_job() -> None:
    """The deep-pipeline example is examples/tiny_gpt2_deep.yaml with its defaults left out."""
    from oobleck.runtime.job_examples import DEEP

    shipped = load_job_config(REPO / "examples" / "tiny_gpt2_deep.yaml")
    assert job_config_from_text(DEEP.yaml, source="deep.yaml") == shipped


def test_model_yaml_form_matches_the_loader() -> None:
    """``arch`` and ``name`` are fields, other keys become HF fields, and name defaults to <arch>-custom."""
    job = job_config_from_text(
        "model: {arch: gpt2, n_layer: 3}\nglobal_batch: 2\nsteps: 1\n", source="job.yaml"
    )
    assert (job.model.name, job.model.arch, job.model.hf_config) == ("gpt2-custom", "gpt2", {"n_layer": 3})
    named = job_config_from_text(
        "model: {arch: gpt2, name: tiny-gpt2, vocab_size: 500}\nglobal_batch: 2\nsteps: 1\n", source="j"
    )
    assert (named.model.name, named.model.hf_config) == ("tiny-gpt2", {"vocab_size": 500})


def test_model_note_lists_the_adapter_presets() -> None:
    """The presets the model section names are exactly the presets the adapters build."""
    presets = list(PRESETS)
    note = job_docs._SECTION_NOTES[job_docs.ModelConfig]
    named = re.findall(r"`(tiny-[a-z0-9-]+)`", note.split("presets:")[1].split(")")[0])
    assert sorted(named) == sorted(presets)


def test_main_writes_then_check_passes_and_detects_staleness(tmp_path: Path) -> None:
    """``main`` writes the file, ``--check`` accepts it, and rejects it after an edit."""
    target = tmp_path / "job.md"
    assert job_docs.main(["--output", str(target)]) == 0
    assert job_docs.main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8") + "edit\n", encoding="utf-8")
    assert job_docs.main(["--check", "--output", str(target)]) == 1


@pytest.mark.parametrize("quoted", ["'3e-4'", '"0.001"'])
def test_a_quoted_learning_rate_gets_an_unquote_hint(quoted: str) -> None:
    """``lr: '3e-4'`` (text in YAML) is refused with a hint to write the number unquoted."""
    from oobleck.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim\.lr: .*without quotes, e\.g\. lr: 3e-4"):
        job_config_from_text(
            f"model: tiny-gpt2\nglobal_batch: 2\nsteps: 1\noptim: {{lr: {quoted}}}\n", source="j"
        )
