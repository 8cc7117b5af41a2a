"""Job configs load from YAML, and every mistake names the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.config import load_job_config
from oobleck.runtime.engine import build_adapter, job_planner, job_profile

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


BASE = "model: tiny-gpt2\nglobal_batch: 8\nmicrobatch_size: 2\nsteps: 3\n"


@pytest.mark.parametrize("name", ["tiny_gpt2.yaml", "tiny_llama.yaml"])
def test_shipped_examples_load(name: str) -> None:
    """The example jobs shipped in examples/ are valid."""
    job = load_job_config(EXAMPLES / name)
    assert job.global_microbatches * job.microbatch_size == job.global_batch
    assert job.model.arch in ("gpt2", "llama")


def test_defaults_and_hf_fields(tmp_path: Path) -> None:
    """Omitted sections take documented defaults; a model mapping keeps its HF fields."""
    job = load_job_config(write(tmp_path, BASE.replace("tiny-gpt2", "{arch: llama, hidden_size: 32}")))
    assert job.model.arch == "llama" and job.model.hf_config == {"hidden_size": 32}
    assert job.optim.lr == 1e-3 and job.data.source == "pydoc" and job.profile == "analytic"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("optim: {lr: -1}\n", "job.yaml: optim.lr: expected a number > 0, got -1"),
        ("optim: {lrr: 1}\n", "job.yaml: optim.lrr: unknown key"),
        ("colour: red\n", "job.yaml: colour: unknown key"),
        ("data: {source: tokens}\n", "job.yaml: data.path: required"),
        ("data: {sequence_length: 0}\n", "job.yaml: data.sequence_length: expected an integer >= 1"),
        ("profile: guessed\n", "job.yaml: profile: expected 'analytic' or 'measured'"),
        ("data: {ledger: 3}\n", "job.yaml: data.ledger: expected true or false"),
        ("hardware: tpu\n", "job.yaml: hardware: unknown entry 'tpu'; choose one of: a100-40"),
        ("device_memory_bytes: 0\n", "job.yaml: device_memory_bytes: expected an integer >= 1"),
    ],
)
def test_bad_keys_name_file_and_path(tmp_path: Path, extra: str, message: str) -> None:
    """Unknown keys and bad values raise ConfigError naming the file and the dotted key."""
    with pytest.raises(ConfigError) as error:
        load_job_config(write(tmp_path, BASE + extra))
    assert str(error.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(error.value)


def test_missing_keys_and_bad_batch(tmp_path: Path) -> None:
    """A missing required key or a batch that is not a multiple of the microbatch is named."""
    with pytest.raises(ConfigError, match=r"job.yaml: steps: missing required key"):
        load_job_config(write(tmp_path, BASE.replace("steps: 3\n", "")))
    with pytest.raises(
        ConfigError, match=r"job.yaml: global_batch: 9 is not a multiple of microbatch_size=2"
    ):
        load_job_config(write(tmp_path, BASE.replace("global_batch: 8", "global_batch: 9")))
    with pytest.raises(ConfigError, match=r"model: unknown preset 'tiny-bert'"):
        load_job_config(write(tmp_path, BASE.replace("tiny-gpt2", "tiny-bert")))
    with pytest.raises(ConfigError, match=r"job.yaml:2: not valid YAML"):
        load_job_config(write(tmp_path, "model: x\n  bad: [\n"))


def test_device_memory_override_deepens_the_pipelines(tmp_path: Path) -> None:
    """``device_memory_bytes`` replaces the hardware entry's memory, so tiny GPT-2 needs 2-node pipelines."""
    roomy = load_job_config(write(tmp_path, BASE + "fault_tolerance: 1\n"))
    tight = load_job_config(write(tmp_path, BASE + "fault_tolerance: 1\ndevice_memory_bytes: 2000000\n"))
    assert tight.hardware_spec().gpu_memory_bytes == 2_000_000
    assert tight.hardware_spec().peak_flops == roomy.hardware_spec().peak_flops
    profile = job_profile(roomy, build_adapter(roomy.model))
    assert job_planner(roomy, profile, 4).min_nodes == 1
    plan = job_planner(tight, profile, 4).plan(range(4))
    assert [pipeline.nodes for pipeline in plan.pipelines] == [(0, 1), (2, 3)]


def test_binary_and_directory_configs_are_config_errors(tmp_path: Path) -> None:
    """A binary config and a config path that is a directory raise one-line ConfigErrors, not tracebacks."""
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe" + bytes(range(256)))
    with pytest.raises(ConfigError, match=rf"{binary}:1: binary data"):
        load_job_config(binary)
    with pytest.raises(ConfigError, match=rf"{tmp_path}: is a directory"):
        load_job_config(tmp_path)


def test_huge_config_is_refused_unread(tmp_path: Path) -> None:
    """A config larger than the 1 MiB cap is refused by its size."""
    huge = tmp_path / "job.yaml"
    huge.write_text(BASE + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"job.yaml: \d+ bytes is larger than the 1048576 bytes"):
        load_job_config(huge)


def test_yaml_bomb_in_the_model_mapping_is_refused(tmp_path: Path) -> None:
    """A billion-laughs bomb inside ``model`` is refused at load, naming the file."""
    levels = ["a: &a [" + ",".join(["lol"] * 10) + "]"]
    levels += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 10) + "]" for p, n in zip("abcde", "bcdef", strict=True)]
    text = (
        "model:\n  arch: gpt2\n" + "".join(f"  {line}\n" for line in levels) + "global_batch: 4\nsteps: 2\n"
    )
    with pytest.raises(ConfigError, match=r"job.yaml:\d+: YAML aliases expand this value beyond"):
        load_job_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("global_batch: 1e12\n", "global_batch: expected an integer in [1, 1048576], got 1000000000000"),
        ("global_batch: 1000000000000\n", "global_batch: expected an integer in [1, 1048576]"),
        ("steps: 100000000000\n", "steps: expected an integer in [1, 10000000]"),
        ("data: {sequence_length: 1e9}\n", "data.sequence_length: expected an integer in [1, 1048576]"),
        ("seed: 1e30\n", "seed: expected an integer in [0, 9223372036854775807]"),
        ("checkpoint: {keep: 0}\n", "checkpoint.keep: expected an integer >= 1, got 0"),
        ("global_batch: 8.5\n", "global_batch: expected an integer >= 1, got 8.5"),
    ],
)
def test_counts_have_documented_maxima(tmp_path: Path, extra: str, message: str) -> None:
    """Counts beyond their documented maximum (``global_batch: 1e12`` ran forever) are refused naming it."""
    text = "\n".join(line for line in BASE.splitlines() if line.split(":")[0] not in extra) + "\n" + extra
    with pytest.raises(ConfigError) as error:
        load_job_config(write(tmp_path, text))
    assert message in str(error.value)


def test_exponent_floats_and_counts_are_numbers(tmp_path: Path) -> None:
    """``lr: 3e-4`` (a string in YAML 1.1) is a float, and ``steps: 1e3`` is the count 1000."""
    text = BASE.replace("steps: 3", "steps: 1e3") + "optim: {lr: 3e-4, min_lr: 1e-5, eps: 1e-8}\n"
    job = load_job_config(write(tmp_path, text))
    assert job.optim.lr == 3e-4 and job.optim.min_lr == 1e-5 and job.steps == 1000
    assert isinstance(job.steps, int)


def test_checkpoint_keep_is_optional(tmp_path: Path) -> None:
    """``checkpoint.keep`` is absent (keep all) by default and an integer >= 1 when given."""
    assert load_job_config(write(tmp_path, BASE)).checkpoint.keep is None
    job = load_job_config(write(tmp_path, BASE + "checkpoint: {every_steps: 2, keep: 3}\n"))
    assert job.checkpoint.keep == 3
