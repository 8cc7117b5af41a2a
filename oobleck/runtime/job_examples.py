"""The worked examples of ``docs/job.md``: complete job files for common tasks, with how to run them.

Each example's YAML is a whole job file; a unit test loads every one through the job config loader,
so an example that stops being valid fails the tests (``oobleck.runtime.job_docs`` renders them).

Assumptions:
    * Only what the code does today is described; pretrained-model loading has no example yet.
    * A custom model's example names a script (``entrypoint``); the loader does not open it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Example:
    """One worked example: a title, what it shows, the job file, and what to do with it."""

    title: str
    text: str
    yaml: str
    after: str = ""


OWN_DATA = Example(
    title="Your own tokens and model shape",
    text="""
Tokenise your corpus with any tokenizer and save the ids as one 1-D array of integers: with numpy,
`np.save("tokens.npy", np.asarray(ids, dtype=np.uint16))` (`uint16` holds ids below 65,536, use
`uint32` above), or write them raw to a `.bin` file and set `data.token_dtype`. A sample is
`sequence_length + 1` consecutive tokens; samples do not overlap. Every id must be below the model's
`vocab_size` (the data loader refuses the file otherwise). The model is a mapping of HuggingFace
config fields for its architecture (`GPT2Config` here); fields you leave out keep HF's defaults,
except dropout, which is off so that a split model reproduces one-process training.
""",
    yaml="""
model:
  arch: gpt2
  n_layer: 4
  n_embd: 256
  n_head: 4
  n_positions: 256        # >= sequence_length
  vocab_size: 50257       # every token id must be below it
data:
  source: tokens
  path: tokens.npy        # relative to this file's folder
  sequence_length: 128
global_batch: 32
microbatch_size: 4
steps: 1000
optim:
  lr: 3e-4
  warmup_steps: 100
  min_lr: 3e-5
  weight_decay: 0.1
fault_tolerance: 1
hardware: cpu
""",
    after="""
Run it on the hosts of a hostfile (`host slots=N` per line), here four local one-slot agents:
`python -m oobleck.runtime.master --hostfile examples/hosts.local4 --config job.yaml --run-dir runs/own`.
""",
)

DEEP = Example(
    title="Deep pipelines (pipelines that span nodes)",
    text="""
The planner uses the fewest nodes per pipeline that hold the model (`n0`), so a small model gets
one-node pipelines. `device_memory_bytes` plans for less memory per device than the hardware entry
has: here 2.8 MB for the 0.14 M-parameter `tiny-gpt2` (its state includes the float64 gradient sums
of `exact_accumulation`, the bitwise verification mode), which needs two nodes per pipeline (n0 = 2).
On four one-slot agents the plan is two 2-node pipelines; with `fault_tolerance: 1` it survives any
one node lost (the three survivors run one 3-node pipeline and a layer is copied to the node that
needs it). This is the job of `examples/tiny_gpt2_deep.yaml` with its defaults left out.
""",
    yaml="""
model: tiny-gpt2
data:
  source: pydoc
  sequence_length: 32
  ledger: true
global_batch: 16
microbatch_size: 2
steps: 20
optim:
  lr: 0.003
  warmup_steps: 2
  min_lr: 0.0003
  weight_decay: 0.01
  exact_accumulation: true
seed: 1234
fault_tolerance: 1
device_memory_bytes: 2800000
hardware: cpu
""",
    after="""
`python -m oobleck.runtime.master --hostfile examples/hosts.local4 --config examples/tiny_gpt2_deep.yaml
--run-dir runs/deep`; `python -m oobleck.demo` runs the same job and kills node 0.
""",
)

CHECKPOINTS = Example(
    title="Checkpoints: surviving more than f failures",
    text="""
Reconfiguration needs no checkpoint while a replica of every layer survives. Beyond that (a stage
lost every replica, or fewer than `(f + 1) * n0` nodes remain) the survivors restart from the newest
complete checkpoint, if at least `n0` of them remain. Checkpoints are written by the elastic runtime
(the master and its agents; the torchrun worker ignores this section) as safetensors plus a JSON
manifest with each shard's size and sha256: a corrupt or incomplete newest checkpoint is skipped for
the previous complete one, so keep at least 2.
""",
    yaml="""
model: tiny-gpt2
global_batch: 16
microbatch_size: 2
steps: 200
fault_tolerance: 1
checkpoint:
  every_steps: 50         # 0 (the default) writes none
  dir: /tmp/oobleck-checkpoints/tiny  # default: <run-dir>/checkpoints; checked writable at start
  keep: 3                 # prune older complete checkpoints; absent keeps all
""",
    after="""
Running the master again on the same `--run-dir` (same hostfile and job file) resumes from the
newest complete checkpoint.
""",
)

OWN_MODEL = Example(
    title="Your own model and hand-written templates",
    text="""
A model that is not one of the HF adapters: write a script that lists its layers as zero-argument
`nn.Module` factories and calls `oobleck.api.main(api.LayeredModel(...))` (layer contract in
`oobleck/api.py`; `examples/custom_model/train.py` is a small byte-level transformer). The job names
the script as `entrypoint`; each agent starts it as its workers. `pipelines` states the templates by
hand, as layer indices per stage: here 6 layers (embedding, 4 blocks, head) in a 2-node and a 3-node
template. With `fault_tolerance: 1` four agents run two 2-node pipelines; after a node is lost the
three survivors run the 3-node template. The master cannot price a custom model without torch, so it
skips the plan check (one notice line); the workers check the templates against the model.
""",
    yaml="""
model: {arch: custom, name: byte-transformer}
entrypoint: train.py      # relative to this file; it calls oobleck.api.main(model)
data:
  source: pydoc
  sequence_length: 32
global_batch: 16
microbatch_size: 2
steps: 8
fault_tolerance: 1
pipelines:
  - stages: [[0, 1, 2], [3, 4, 5]]
  - stages: [[0, 1], [2, 3], [4, 5]]
""",
    after="""
`python -m oobleck.runtime.master --hostfile examples/hosts.local4 --config examples/custom_model/job.yaml
--run-dir runs/custom`. Under torchrun a node is the `--nproc-per-node` processes of one machine:
`torchrun --standalone --nproc-per-node 2 examples/custom_model/train.py --config JOB --run-dir DIR` runs
a job whose templates are the 2-stage one alone (2 ranks = one node of 2 devices), or have none.
""",
)

EXAMPLES: tuple[Example, ...] = (OWN_DATA, DEEP, CHECKPOINTS, OWN_MODEL)
"""The examples, in the order ``docs/job.md`` shows them."""
