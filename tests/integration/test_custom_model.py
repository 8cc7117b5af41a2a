"""A user's own torch model (``examples/custom_model``, not HF) under the elastic runtime.

Issue #15 item 7: the job's ``entrypoint`` script calls ``oobleck.api.main``; a real master starts
four agents, each running the script as its worker; the plan uses the job's manual templates
(2-node and 3-node pipelines); one node is SIGKILLed mid-run and the survivors recover onto a
manual template. Losses equal the fault-free run (exact accumulation, ``==``) and every sample is
used once. The fault-free reference is the same script standalone, in one process, on the same
job without ``pipelines`` (with exact accumulation any split of the batch gives the same bits).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import (
    Run,
    assert_ledger_exact,
    kill_group,
    run_master,
    run_standalone,
    write_hosts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_model"
KILLED_NODE = 3
"""Node of the second pipeline (nodes 2, 3 under the 2 + 2 plan): its survivor must be re-homed."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example copied to a temp folder (the job's entrypoint is relative to the job file)."""
    out = tmp_path_factory.mktemp("custom_model")
    for name in ("train.py", "job.yaml"):
        shutil.copy(EXAMPLE / name, out / name)
    return out


@pytest.fixture(scope="module")
def reference(folder: Path) -> Run:
    """The fault-free run: the user's script standalone, one process, generated 1-node template."""
    text = (folder / "job.yaml").read_text()
    job = folder / "reference.yaml"
    job.write_text(text[: text.index("pipelines:")])
    run = run_standalone(folder / "reference", job, entrypoint=folder / "train.py")
    assert len(run.losses) == 8
    return run


@pytest.mark.timeout(420)
def test_custom_model_survives_a_sigkilled_node_with_manual_templates(folder: Path, reference: Run) -> None:
    """A custom-model job on manual templates survives a SIGKILLed node with its fault-free losses."""
    run = run_master(
        folder / "elastic",
        write_hosts(folder, 4),
        folder / "job.yaml",
        at_step=2,
        action=lambda run_dir: kill_group(run_dir, KILLED_NODE),
    )
    assert run.rc == 0, run.master_log[-3000:]
    assert run.losses == reference.losses
    assert_ledger_exact(run, reference, in_flight=tuple(range(2, 5)))
    plans = [r for r in run.records if r.get("event") == "recovery"]
    assert plans and plans[0]["lost"] == [KILLED_NODE], plans
    worker_log = "\n".join(p.read_text() for p in (folder / "elastic" / "logs").rglob("*.log"))
    assert "recovery uses your pipeline templates: 3 nodes [0-1 | 2-3 | 4-5]" in worker_log
    assert "stage (0, 1) layers (3, 4, 5)" in worker_log  # gen 0 ran the 2-node manual template


def test_custom_worker_never_imports_transformers_or_dtensor(folder: Path) -> None:
    """The example's model, engine, planner and worker modules load freshly without transformers, and
    the worker's modules and engine without torch.distributed.tensor (and sympy), which only a
    tensor-parallel stage needs.

    NOTE: profiling the custom model builds each layer on the meta device, and ``nn.init`` on meta
    imports torch._dynamo (and with it DTensor): about 1.9 CPU-s per worker, checked after that point.
    """
    code = f"""
import runpy, sys
import oobleck.api, oobleck.runtime.elastic, oobleck.runtime.worker
from oobleck.runtime.config import load_job_config
from oobleck.runtime.engine.custom_model import CustomModel
from oobleck.runtime.engine.engine import Engine
from oobleck.runtime.engine.standalone import job_planner, job_profile
model = runpy.run_path({str(folder / "train.py")!r}, run_name="example")["MODEL"]
custom = CustomModel.of(model, None)
job = custom.job_for(load_job_config({str(folder / "job.yaml")!r}))
engine = Engine(job, node=0, model=custom)
print("torch.distributed.tensor" in sys.modules)
planner = job_planner(job, job_profile(job, engine.adapter), 4)
assert [t.num_nodes for t in planner.templates] == [2, 3]
engine.adapter.build_layer(1, job.seed)
print("transformers" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "False"]
