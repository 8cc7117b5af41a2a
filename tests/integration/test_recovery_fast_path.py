"""The recovery fast path, end to end: a SIGKILLed node's loss is planned ahead and timed per phase.

One run only (no fault-free reference: the losses and ledger of in-place recoveries are held by
``test_elastic_recovery.py`` and ``test_deep_recovery.py``); two one-slot agents, eight steps.
"""

from __future__ import annotations

import pytest

from tests.integration.harness import kill_group, run_master, write_hosts, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASES = {"notice_to_regroup", "store", "barrier", "plan", "init_group", "subgroups", "transfer"}


@pytest.mark.timeout(240)
def test_a_single_loss_is_a_lookup_and_every_phase_is_timed(tmp_path):
    """After a SIGKILL the survivor's plan comes from its prepared re-plans and every phase is timed."""
    run = run_master(
        tmp_path / "kill",
        write_hosts(tmp_path, 2),
        write_job(tmp_path, steps=8),
        at_step=3,
        action=lambda d: kill_group(d, 1),
    )
    assert run.rc == 0, run.master_log[-3000:]
    assert sorted(run.losses) == list(range(8))
    (record,) = run.events("recovery")
    assert record["lost"] == [1] and record["restart"] is False
    assert record["plan_cached"] is True
    assert set(record["regroup_ms"]) >= PHASES, record["regroup_ms"]
    assert all(ms >= 0.0 for ms in record["regroup_ms"].values())
