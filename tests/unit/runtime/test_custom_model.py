"""A user's own model: job keys, preflight, the agent's entrypoint argv."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.config import job_config_from_dict, load_job_config
from oobleck.runtime.control.agent import job_entrypoint, worker_argv
from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.job_preflight import check_job

CUSTOM = {"model": {"arch": "custom", "name": "my-mlp"}, "global_batch": 4, "steps": 1}


def write_job(folder: Path, text: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(text)
    return path


def test_custom_model_needs_an_entrypoint_and_hf_models_refuse_one() -> None:
    """`arch: custom` without `entrypoint`, an HF model with one, HF fields on custom: one-line errors."""
    with pytest.raises(ConfigError, match=r"^job.yaml: entrypoint: required with model.arch custom"):
        job_config_from_dict(CUSTOM, source="job.yaml")
    with pytest.raises(ConfigError, match=r"^job.yaml: entrypoint: only for model.arch custom"):
        job_config_from_dict({**CUSTOM, "model": "tiny-gpt2", "entrypoint": "t.py"}, source="job.yaml")
    with pytest.raises(
        ConfigError, match=r"^job.yaml: model.n_layer: a custom model takes only name and vocab"
    ):
        job_config_from_dict({**CUSTOM, "model": {"arch": "custom", "n_layer": 2}}, source="job.yaml")


def test_entrypoint_resolves_against_the_job_file_and_pipelines_parse(tmp_path: Path) -> None:
    """A relative entrypoint is made relative to the job file; `pipelines` become template specs."""
    path = write_job(
        tmp_path,
        "model: {arch: custom, name: m}\nentrypoint: train.py\nglobal_batch: 4\nsteps: 1\n"
        "pipelines:\n  - {stages: [[0, 1], [2, 3]], microbatches: 2}\n",
    )
    job = load_job_config(path)
    assert job.entrypoint == str(tmp_path / "train.py")
    assert [spec.stages for spec in job.pipelines] == [((0, 1), (2, 3))]
    assert json.dumps(job.to_dict())  # plain data, logged once at start


def test_bad_pipelines_entry_names_file_and_key() -> None:
    """A malformed `pipelines` entry is refused with the file and `pipelines[i]...` key."""
    raw = {**CUSTOM, "entrypoint": "t.py", "pipelines": [{"stages": [[0, "x"]]}]}
    with pytest.raises(ConfigError, match=r"^job.yaml: pipelines\[0\]\.stages\[0\]: expected layer indices"):
        job_config_from_dict(raw, source="job.yaml")


def test_preflight_refuses_a_missing_entrypoint_and_skips_the_plan_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The master refuses a missing script before agents start, and says the plan check is skipped."""
    path = write_job(
        tmp_path, "model: {arch: custom, name: m}\nentrypoint: nope.py\nglobal_batch: 4\nsteps: 1\n"
    )
    job = load_job_config(path)
    with pytest.raises(ConfigError, match=r"entrypoint: .*nope.py is not a file"):
        check_job(job, str(path))
    (tmp_path / "nope.py").write_text("")
    with caplog.at_level(logging.WARNING):
        check_job(job, str(path), [HostEntry("localhost")] * 2)
    assert "plan check skipped: custom model 'm'" in caplog.text


def test_preflight_refuses_a_manual_template_that_misses_a_layer(tmp_path: Path) -> None:
    """An HF job whose `pipelines` leave out the head is refused by the master, naming the stage."""
    path = write_job(
        tmp_path,
        "model: tiny-gpt2\nglobal_batch: 4\nsteps: 1\npipelines:\n  - {stages: [[0, 1], [2]]}\n",
    )
    with pytest.raises(
        ConfigError, match=r"job.yaml: pipelines\[0\]\.stages\[1\]: the last stage must hold the head"
    ):
        check_job(load_job_config(path), str(path), [HostEntry("localhost")] * 2)


def test_agent_starts_the_entrypoint_script(tmp_path: Path) -> None:
    """With an entrypoint the agent runs `python <script> --config --run-dir`, else the worker module."""
    (tmp_path / "train.py").write_text("")
    path = write_job(
        tmp_path, "model: {arch: custom, name: m}\nentrypoint: train.py\nglobal_batch: 4\nsteps: 1\n"
    )
    script = job_entrypoint(path.read_text(), str(path))
    assert script == str(tmp_path / "train.py")
    argv = worker_argv("oobleck.runtime.worker", script, config_path=str(path), run_dir="out")
    assert argv == [sys.executable, script, "--config", str(path), "--run-dir", "out"]
    assert worker_argv("m", None, config_path="j", run_dir="o")[1:3] == ["-m", "m"]
    assert job_entrypoint("model: tiny-gpt2\nglobal_batch: 4\nsteps: 1\n", str(path)) is None


def _model() -> object:
    from torch import nn

    from oobleck import api

    def embed() -> nn.Module:
        return nn.Embedding(258, 8)

    def block() -> nn.Module:
        return nn.Linear(8, 8)

    def head() -> nn.Module:
        return nn.Linear(8, 258)

    return api.LayeredModel(name="m", layers=[embed, block, block, head], hidden_size=8, vocab_size=258)


def test_api_main_refuses_a_bad_template_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`api.main` with a template that misses the head exits 2 with one line, before reading any job."""
    from oobleck import api

    code = api.main(_model(), pipelines=[{"stages": [[0, 1], [2]]}], argv=["--config", "x", "--run-dir", "y"])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err
        == "error: pipelines[0].stages[1]: the last stage must hold the head (layer 3); it ends at "
        + ("layer 2, so layer 3 is in no stage\n")
    )


def test_script_and_job_must_agree(tmp_path: Path) -> None:
    """A script's model needs an `arch: custom` job, and templates given twice must be equal."""
    from oobleck.runtime.engine.custom_model import CustomModel

    custom = CustomModel.of(_model(), [{"stages": [[0, 1], [2, 3]]}])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model.arch: 'gpt2', but this script brings its own model"):
        custom.job_for(job_config_from_dict({"model": "tiny-gpt2", "global_batch": 4, "steps": 1}))
    twice = {**CUSTOM, "entrypoint": "t.py", "pipelines": [{"stages": [[0, 1, 2, 3]]}]}
    with pytest.raises(ConfigError, match=r"pipelines: given both in the job file and to api.main"):
        custom.job_for(job_config_from_dict(twice))
    wide = {**CUSTOM, "model": {"arch": "custom", "name": "m", "vocab_size": 50257}, "entrypoint": "t.py"}
    with pytest.raises(
        ConfigError, match=r"model.vocab_size: the job file says 50257 .* LayeredModel has 258"
    ):
        custom.job_for(job_config_from_dict(wide))
    job = custom.job_for(job_config_from_dict({**CUSTOM, "entrypoint": "t.py"}))
    assert [spec.stages for spec in job.pipelines] == [((0, 1), (2, 3))]
    with pytest.raises(ConfigError, match=r"LayeredModel.layers: expected at least 2 layer factories"):
        from oobleck import api

        api.LayeredModel(name="m", layers=[list], hidden_size=8, vocab_size=8)


def test_master_exits_2_on_a_missing_entrypoint_before_any_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oobleck master` on a custom job whose script is missing exits 2 with one line naming entrypoint."""
    from oobleck.cli import master as master_cli

    path = write_job(
        tmp_path, "model: {arch: custom, name: m}\nentrypoint: gone.py\nglobal_batch: 4\nsteps: 1\n"
    )
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n" * 2)
    argv = ["--hostfile", str(hosts), "--config", str(path), "--run-dir", str(tmp_path / "run")]
    assert master_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "entrypoint:" in err[0] and "gone.py is not a file" in err[0], err
    assert not (tmp_path / "run" / "agents.json").exists()


def test_measured_profile_times_a_custom_head_with_its_own_loss() -> None:
    """`profile: measured` runs a custom head through the model's loss, whatever the head outputs."""
    import torch
    from torch import nn

    from oobleck import api
    from oobleck.runtime.engine.custom_model import CustomModel
    from oobleck.runtime.engine.profiler import measure_profile

    def head() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 1), nn.Flatten(start_dim=-2))  # [b, t, 8] -> [b, t]: not logits

    def loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (output - targets.float()).pow(2).mean()

    model = api.LayeredModel(
        name="regress", layers=[lambda: nn.Embedding(16, 8), head], hidden_size=8, vocab_size=16, loss=loss
    )
    profile = measure_profile(
        CustomModel.of(model, None).adapter(),
        microbatch_size=1,
        sequence_length=4,
        device=torch.device("cpu"),
        warmup=0,
        repeats=1,
    )
    assert [layer.kind for layer in profile.layers] == ["embedding", "head"]
    assert profile.layers[1].param_bytes > 0


def test_master_checks_the_data_against_a_custom_models_vocab_size(tmp_path: Path) -> None:
    """A custom model's `vocab_size` is what the master checks token ids against, before any agent."""
    import numpy as np

    from oobleck.runtime.control.preflight import check_data_inputs

    np.save(tmp_path / "tokens.npy", np.arange(1000, dtype=np.uint16))
    (tmp_path / "train.py").write_text("")
    text = "entrypoint: train.py\ndata: {source: tokens, path: tokens.npy}\nglobal_batch: 4\nsteps: 1\n"
    small = load_job_config(write_job(tmp_path, "model: {arch: custom, name: m}\n" + text))
    with pytest.raises(ConfigError, match="vocab"):
        check_data_inputs(small, source="job.yaml")
    wide = load_job_config(write_job(tmp_path, "model: {arch: custom, name: m, vocab_size: 1000}\n" + text))
    check_data_inputs(wide, source="job.yaml")
