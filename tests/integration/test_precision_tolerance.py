"""bf16 without exact accumulation: heterogeneous pipelines and a recovered run stay within tolerance.

Issue #12 items 2 and 6. The job is the harness's tiny job in bf16 with ``optim.exact_accumulation``
off (the default), 8 steps. Its fault-free reference is one process (one pipeline, 8 microbatches).
The elastic run has 5 one-slot agents and four heterogeneous pipelines: three 1-node pipelines
(1 stage) and one 2-node pipeline (2 stages), read back from the run's ``plans/gen0.json``. The
composition is pinned by ``pipelines[i].count``, because the planner's own rule (minimise the
makespan) would not choose it: a node that holds the model is always fastest as its own pipeline,
so unpinned it would run five 1-node pipelines. A node of the 2-node pipeline is SIGKILLed after
step 3; the 4 survivors become four 1-node pipelines, with the layers it held copied to its partner.
Every loss before the kill measures "heterogeneous pipelines vs one process", every loss after it
"a recovered run vs the fault-free run". Both must agree within ``LOSS_TOLERANCE_REL['bf16']`` (set
from ``benchmarks/precision_spread.py``), and the sample ledger must be exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.planning.plan import Plan
from oobleck.runtime.engine.precision import LOSS_TOLERANCE_REL
from tests.integration.harness import (
    JOB,
    Run,
    assert_ledger_exact,
    assert_losses_match,
    kill_group,
    run_master,
    run_standalone,
    write_hosts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 8
KILL_AFTER_STEP = 3
AGENTS = 5
HETERO_PIPELINES = """\
pipelines:
  - {stages: [[0, 1, 2, 3]], count: 3}
  - {stages: [[0, 1], [2, 3]], count: 1}
"""
"""Three 1-node pipelines and one 2-node pipeline of the 4-layer tiny models, on the 5 agents."""


def write_bf16_job(folder: Path, model: str, f: int, pipelines: str = "") -> Path:
    """The harness job for ``model`` in bf16, exact accumulation off, ``STEPS`` steps, fault tolerance f."""
    text = JOB.format(steps=STEPS, f=f, every=0).replace("model: tiny-gpt2", f"model: {model}")
    text = text.replace("exact_accumulation: true", "exact_accumulation: false")
    text += "precision: bf16\n" + pipelines
    path = folder / f"{model}-bf16-f{f}{'-hetero' if pipelines else ''}.yaml"
    path.write_text(text)
    return path


def plan_of(run_dir: Path, generation: int) -> Plan:
    """The plan the run adopted for ``generation`` (``plans/gen<G>.json``)."""
    record = json.loads((run_dir / "plans" / f"gen{generation}.json").read_text())
    return Plan.from_dict(record["plan"], gpus_per_node=1)


def last_node_of_longest_pipeline(run_dir: Path) -> int:
    """The node to kill: the last stage's node of the first plan's longest pipeline."""
    longest = max(plan_of(run_dir, 0).pipelines, key=lambda p: len(p.template.stages))
    return longest.nodes[-1]


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run, int]:
    """(fault-free one-process run, 5-agent 1+1+1+2-node run with a node killed after step 3, that node)."""
    model = request.param
    folder = tmp_path_factory.mktemp(f"bf16-{model}")
    # NOTE: f and the counts only shape the plan (one process needs f = 0); the math is the same.
    reference = run_standalone(folder / "ref", write_bf16_job(folder, model, f=0))
    killed: list[int] = []

    def kill(run_dir: Path) -> None:
        killed.append(last_node_of_longest_pipeline(run_dir))
        kill_group(run_dir, killed[0])

    run = run_master(
        folder / "kill",
        write_hosts(folder, AGENTS),
        write_bf16_job(folder, model, f=1, pipelines=HETERO_PIPELINES),
        at_step=KILL_AFTER_STEP,
        action=kill,
    )
    assert run.rc == 0, run.master_log[-3000:]
    return reference, run, killed[0]


@pytest.mark.timeout(500)
def test_recovered_bf16_run_stays_within_the_measured_tolerance(runs: tuple[Run, Run, int]) -> None:
    """Four heterogeneous pipelines, then four 1-node ones after a kill: every loss within bf16 tolerance."""
    reference, run, killed = runs
    assert len(reference.losses) == STEPS
    first = plan_of(run.run_dir, 0)
    assert [(p.nodes, len(p.template.stages)) for p in first.pipelines] == [
        ((0,), 1),
        ((1,), 1),
        ((2,), 1),
        ((3, 4), 2),
    ]
    assert first.spare_nodes == () and killed == 4
    assert [m["lost"] for m in run.events("membership") if m.get("lost")] == [[killed]]
    recovery = run.events("recovery")
    assert len(recovery) == 1 and not recovery[0]["restart"], recovery
    assert [(p["nodes"], len(p["stages"])) for p in recovery[0]["pipelines"]] == [([n], 1) for n in range(4)]
    # node 3 held layers 0-1 of the 2-node pipeline; it now runs all four, so layers 2-3 came to it.
    assert sorted((t["layer"], t["dst"]) for t in recovery[0]["transfers"]) == [(2, 3), (3, 3)]
    assert_losses_match(run, reference, rel=LOSS_TOLERANCE_REL["bf16"])
    differs = [s for s in reference.losses if run.losses[s] != reference.losses[s]]
    assert differs, "without exact accumulation the splits should not give identical bits"


@pytest.mark.timeout(60)
def test_recovered_bf16_run_uses_every_sample_once(runs: tuple[Run, Run, int]) -> None:
    """The recovered run consumed exactly the fault-free run's samples, each step's once."""
    reference, run, _ = runs
    assert_ledger_exact(run, reference, in_flight=(KILL_AFTER_STEP, KILL_AFTER_STEP + 1))
