"""``oobleck export`` writes a run's newest verified checkpoint as an HF folder with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oobleck.cli import main
from oobleck.runtime.config import load_job_config
from oobleck.runtime.control.checkpoint import write_shard
from oobleck.runtime.engine.adapters import build_adapter

JOB = "model: {model}\nglobal_batch: 2\nsteps: 1\ncheckpoint:\n  every_steps: 1\n"


def _state(layer: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
    """One layer's entries in the engine's checkpoint format (``Engine.state_tensors``)."""
    out = {f"layers.{index}.step": torch.tensor(3)}
    for name, param in layer.named_parameters():
        out[f"layers.{index}.param.{name}"] = param.detach().clone()
        out[f"layers.{index}.exp_avg.{name}"] = torch.zeros_like(param)
        out[f"layers.{index}.exp_avg_sq.{name}"] = torch.zeros_like(param)
    return out


@pytest.mark.parametrize("preset", ["tiny-gpt2-tied", "tiny-llama", "tiny-opt"])
def test_export_round_trips_logits(tmp_path: Path, preset: str, capsys) -> None:
    """An exported checkpoint loads with from_pretrained and gives the checkpoint's layers' logits."""
    from transformers import AutoModelForCausalLM

    config = tmp_path / "job.yaml"
    config.write_text(JOB.format(model=preset))
    adapter = build_adapter(load_job_config(config).model)
    layers = [adapter.build_layer(i, seed=11).eval() for i in range(adapter.num_layers)]
    with torch.no_grad():
        for layer in layers:  # NOTE: not the seeded init any more: export must carry these values
            for param in layer.parameters():
                param.add_(0.01)
    run_dir = tmp_path / "run"
    # Two writers (as two pipeline-0 stages), and an older step that must not be chosen.
    for step in (1, 2):
        split = adapter.num_layers // 2
        for node, part in enumerate((range(split), range(split, adapter.num_layers))):
            tensors = {k: v * (step == 2) for i in part for k, v in _state(layers[i], i).items()}
            write_shard(
                run_dir / "checkpoints", step, node=node, local_rank=0, layers=list(part), tensors=tensors
            )
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--to", str(out), "--config", str(config)]) == 0
    assert "step 2" in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.randint(0, adapter.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = ids
        for layer in layers:
            hidden = layer(hidden)
        torch.testing.assert_close(hf(input_ids=ids).logits, hidden, rtol=1e-5, atol=1e-5)


def test_export_without_checkpoint_or_job_is_exit_2(tmp_path: Path, capsys) -> None:
    """No job.json and no --config, or no complete checkpoint: one line naming the fix, exit 2."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert main(["export", str(run_dir), "--to", str(tmp_path / "out")]) == 2
    assert "no job.json" in capsys.readouterr().err
    config = tmp_path / "job.yaml"
    config.write_text(JOB.format(model="tiny-gpt2"))
    assert main(["export", str(run_dir), "--to", str(tmp_path / "out"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no complete, verified checkpoint" in err and "Traceback" not in err
