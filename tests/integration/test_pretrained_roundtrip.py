"""Pretrained round trip: HF folder -> elastic run, heterogeneous plan, a kill -> export -> HF loads it.

A tiny GPT-2 (tied head) is saved with ``save_pretrained``; five agents train it from that folder on
text files tokenized with the shipped BPE tokenizer, under a 2-stage + 3-stage plan (small device
memory forces n0 = 2); a node of the 3-stage pipeline is killed after step 1 and the job recovers
into two 2-stage pipelines; ``oobleck export`` writes the newest checkpoint (after the last step)
back as an HF folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oobleck.cli import main as oobleck_main
from oobleck.data.tokenizer import PYDOC_BPE_FILE
from oobleck.runtime.config import load_job_config
from oobleck.runtime.control.checkpoint import latest_complete
from oobleck.runtime.engine import job_planner, job_profile
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.data import GlobalSampler, load_dataset
from tests.integration.harness import kill_group, run_master, write_hosts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, GLOBAL_BATCH = 4, 16
JOB = f"""\
model:
  pretrained: hf_in
data:
  source: text
  path: texts
  tokenizer: pydoc-bpe
  sequence_length: 16
  ledger: true
global_batch: {GLOBAL_BATCH}
microbatch_size: 2
steps: {STEPS}
optim:
  lr: 0.003
  exact_accumulation: true
seed: 7
fault_tolerance: 1
checkpoint:
  every_steps: 2
hardware: cpu
device_memory_bytes: 1700000  # with the float64 sums of exact accumulation: a 2+3-node plan on 5
"""


@pytest.mark.timeout(400)
def test_pretrained_kill_export_round_trip(tmp_path: Path) -> None:
    """Step 0's loss is HF's, a kill is survived, and the exported model has the last step's logits."""
    from pydoc_data.topics import topics

    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    hf_config = GPT2Config(
        vocab_size=1024, n_layer=2, n_embd=32, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    hf_in = AutoModelForCausalLM.from_config(hf_config)
    hf_in.save_pretrained(str(tmp_path / "hf_in"))
    (tmp_path / "texts").mkdir()
    for key in ("assert", "for", "if", "while"):
        (tmp_path / "texts" / f"{key}.txt").write_text(topics[key])
    config = tmp_path / "job.yaml"
    config.write_text(JOB)
    run = run_master(
        tmp_path / "run", write_hosts(tmp_path, 5), config, at_step=1, action=lambda d: kill_group(d, 4)
    )
    assert run.rc == 0, run.master_log[-3000:]
    assert sorted(run.losses) == list(range(STEPS))
    recovery = run.events("recovery")
    assert [r["lost"] for r in recovery] == [[4]] and not recovery[0]["restart"]
    assert recovery[0]["layers_copied"] > 0  # the 2-stage + 3-stage plan became two 2-stage pipelines
    assert sorted(len(p["stages"]) for p in recovery[0]["pipelines"]) == [2, 2]

    job = load_job_config(config)
    adapter = build_adapter(job.model)
    first_plan = job_planner(job, job_profile(job, adapter), 5).plan(
        tuple(range(5))
    )  # what every worker computed
    assert sorted(len(p.template.stages) for p in first_plan.pipelines) == [2, 3]
    dataset = load_dataset(job.data, 1024)
    sampler = GlobalSampler(len(dataset), seed=job.seed, global_batch=GLOBAL_BATCH)
    ledger = run.ledger()
    for step in range(STEPS):
        assert sorted(ledger[step]) == sorted(sampler.step_samples(step)), step  # none skipped or repeated

    # Step 0's loss is the HF model's on the same samples: training started from the folder's weights.
    batch = dataset.batch(sampler.step_samples(0))
    with torch.no_grad():
        hf_loss = hf_in.eval()(input_ids=batch, labels=batch).loss.item()
    assert abs(run.losses[0] - hf_loss) <= 1e-5 * hf_loss, (run.losses[0], hf_loss)

    assert oobleck_main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf_out")]) == 0
    hf_out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_out")).eval()
    assert (tmp_path / "hf_out" / "tokenizer.json").read_bytes() == PYDOC_BPE_FILE.read_bytes()
    checkpoint = latest_complete(tmp_path / "run" / "checkpoints", adapter.num_layers)
    assert checkpoint is not None and checkpoint.step == STEPS
    tensors = checkpoint.load()
    with torch.no_grad():
        hidden = batch[:, :-1]
        for index in range(adapter.num_layers):
            layer = adapter.build_layer(index, seed=job.seed).eval()
            for name, param in layer.named_parameters():
                param.copy_(tensors[f"layers.{index}.param.{name}"])
            hidden = layer(hidden)
        exported = hf_out(input_ids=batch[:, :-1]).logits
        original = hf_in(input_ids=batch[:, :-1]).logits
    torch.testing.assert_close(exported, hidden, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(exported, original, atol=1e-3)  # it trained: not the input weights
