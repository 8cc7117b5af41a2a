"""The benchmark's per-node CPU budgets: a real cgroup caps a real busy process, and is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import node_cpu


def test_a_quota_is_the_cpus_share_of_a_period_and_nonsense_is_refused() -> None:
    """A third of a CPU is a third of each 10 ms period; zero, negative and sub-ms quotas are refused."""
    assert node_cpu.quota_us(1 / 3) == 3333
    assert node_cpu.quota_us(2.0) == 20_000
    for cpus in (0.0, -1.0, 0.05):
        with pytest.raises(ValueError, match="CPU"):
            node_cpu.quota_us(cpus)


def test_auto_budgets_leave_the_control_plane_a_quarter_of_the_cores() -> None:
    """Part (b) on 2 cores: 6 nodes of 0.25 CPUs, 1.5 CPUs in all, never every core."""
    assert node_cpu.auto_cpus(2, 6) == pytest.approx(0.25)
    assert node_cpu.auto_cpus(2, 4) == pytest.approx(0.375)
    for cores, nodes in ((2, 6), (2, 4), (64, 8)):
        assert node_cpu.auto_cpus(cores, nodes) * nodes < cores


def test_a_folder_that_is_no_cpu_controller_is_named_in_the_error(tmp_path: Path) -> None:
    """Without a cgroup cpu controller the benchmark says where it looked, before any run."""
    with pytest.raises(node_cpu.NodeCpuBudgetError, match=str(tmp_path)):
        node_cpu.require_controller(tmp_path)


def _controller_or_skip() -> None:
    try:
        node_cpu.require_controller()
    except node_cpu.NodeCpuBudgetError as exc:
        pytest.skip(f"needs a writable cgroup cpu controller: {exc}")


@pytest.mark.timeout(60)
def test_a_busy_process_in_a_budget_uses_its_share_and_the_groups_are_removed() -> None:
    """A spinning process placed in a 0.1-CPU budget gets at most that share and is throttled.

    Only the bound is asserted: on a loaded machine the spinner may get less than its budget."""
    _controller_or_skip()
    name = f"oobleck-test-{os.getpid()}"
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with node_cpu.NodeCpuBudgets(2, 0.1, name=name) as budgets:
            budgets.place(1, spin.pid)
            budgets.place(1, spin.pid)  # NOTE: a second placement of the same pid is a no-op.
            before = _cpu_s(spin.pid)
            started = time.monotonic()
            time.sleep(1.0)
            share = (_cpu_s(spin.pid) - before) / (time.monotonic() - started)
            throttled = budgets.throttled_s()
            assert (node_cpu.CPU_CONTROLLER / name / "node1" / "cgroup.procs").read_text().split() == [
                str(spin.pid)
            ]
        assert share < 0.15, share
        assert throttled[0] == 0.0 and throttled[1] > 0.0, throttled
        assert not (node_cpu.CPU_CONTROLLER / name).exists()
        assert str(spin.pid) in (node_cpu.CPU_CONTROLLER / "cgroup.procs").read_text().split()
    finally:
        spin.kill()
        spin.wait()


def test_placing_a_process_that_has_exited_is_ignored() -> None:
    """The benchmark places processes while it kills them: a gone pid is not an error."""
    _controller_or_skip()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with node_cpu.NodeCpuBudgets(1, 0.5, name=f"oobleck-test-gone-{os.getpid()}") as budgets:
        budgets.place(0, gone.pid)
        assert budgets.throttled_s() == [0.0]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
