"""Multi-device nodes end to end: agents of ``localhost slots=2`` (one worker per slot), a node lost whole.

Issue #11 item 1. A 2-slot node is a 2-device node on the ``cpu`` hardware entry; the planner
(``max_gpus_per_stage=1``) gives each device one stage, so a node hosts two stages or two replicas.
SIGKILLing an agent's process group kills both its workers at once; the master must count one node
lost and the survivors recover in place with the fault-free losses (exact accumulation) and ledger.
"""

from __future__ import annotations

import pytest

from tests.integration.harness import (
    assert_ledger_exact,
    assert_losses_match,
    kill_group,
    run_master,
    run_standalone,
    write_hosts,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("multi_slot")


@pytest.fixture(scope="module")
def job(folder):
    return write_job(folder, steps=8)


@pytest.fixture(scope="module")
def reference(folder, job):
    """The fault-free losses and ledger of the job (one process; exact accumulation)."""
    return run_standalone(folder / "ref", write_job(folder, steps=8, f=0))


@pytest.mark.timeout(420)
def test_two_slot_node_killed_recovers_in_place(folder, job, reference):
    """Three 2-slot agents, one SIGKILLed mid-run: one node lost, losses and ledger equal the reference."""
    run = run_master(
        folder / "kill",
        write_hosts(folder, 3, slots=2),
        job,
        at_step=2,
        action=lambda run_dir: kill_group(run_dir, 1),
    )
    assert run.rc == 0, run.master_log[-4000:]
    recoveries = run.events("recovery")
    assert len(recoveries) == 1, run.events("recovery")
    assert recoveries[0]["lost"] == [1], recoveries
    for pipeline in recoveries[0]["pipelines"]:  # a 2-device node runs two 1-device stages
        for node in pipeline["nodes"]:
            assert sum(stage["node"] == node for stage in pipeline["stages"]) == 2, pipeline
    assert_losses_match(run, reference, rel=0.0)
    assert_ledger_exact(run, reference, in_flight=(2, 3))
