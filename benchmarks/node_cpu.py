"""Each benchmark node on its own CPU budget, as each node of a cluster brings its own hardware.

On one machine every "node" of the recovery benchmark is a few processes on the same cores, so
throughput is bounded by the cores and not by how many nodes train: a peer that stops a node's
work hands that node's CPU to the survivors (torchft's samples/s *rose* after it dropped a
replica group), and a SIGKILLed node's exit (50-60 ms of CPU for a torch process) is paid by the
survivors' cores. On a cluster a dead node takes its compute with it and exits on its own
machine. Linux CFS bandwidth control restores that: each node's processes share one cgroup of
the v1 ``cpu`` controller with a fixed quota of CPU time per period, so a node can never use more
than its share and a dead node's share is left idle, not redistributed.

The master, the lighthouse and torchrun's elastic agent stay outside every node's budget: they
are the cluster's control plane.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

CPU_CONTROLLER = Path("/sys/fs/cgroup/cpu")
"""Where the cgroup v1 ``cpu`` controller is mounted (a container's default)."""
PERIOD_US = 10_000
"""CFS period: a node throttled for exhausting its quota waits at most the rest of one period.

10 ms keeps that wait short next to a 30-50 ms step; 100 ms (the kernel's default) let a node
run its whole quota in one burst and then stall for two thirds of a period.
"""


NODES_SHARE = 0.75
"""The part of the machine's cores that ``auto`` budgets give the nodes, all together.

The rest is the control plane's (master, lighthouse, the benchmark itself) and a killed node's
exit: with budgets summing to every core (part (b): 6 x 0.33 of 2 cores) those processes took
CPU from the nodes, a node did not get its budget, and a loss freed CPU that sped the survivors
up, so torchft's 4 surviving nodes kept 77% of its samples/s where 4 of 6 nodes can give 67%.
At 0.75 (6 x 0.25), over two runs, its survivors kept 56-73% and oobleck's 5 kept 83-85% (5/6
is 83%): each node gets its budget, as on a cluster, where a node's compute is its own.
"""


def auto_cpus(cores: int, nodes: int) -> float:
    """Each node's budget for ``--node-cpus auto``: :data:`NODES_SHARE` of the cores, split evenly."""
    return NODES_SHARE * cores / nodes


class NodeCpuBudgetError(RuntimeError):
    """This machine cannot give processes a CPU budget (no writable cgroup ``cpu`` controller)."""


def quota_us(cpus: float, period_us: int = PERIOD_US) -> int:
    """The CFS quota (microseconds per period) that lets a group use ``cpus`` CPUs on average.

    Raises:
        ValueError: ``cpus`` is not positive, or so small that the quota is under the kernel's
            1 ms minimum.
    """
    if cpus <= 0:
        raise ValueError(f"a node's CPU budget must be positive, got {cpus:g}")
    quota = round(cpus * period_us)
    if quota < 1000:
        raise ValueError(f"{cpus:g} CPUs is {quota} us per {period_us} us period; the kernel needs >= 1000")
    return quota


def require_controller(controller: Path = CPU_CONTROLLER) -> None:
    """Check that budgets can be made here, before a benchmark spends minutes on its first runs.

    Raises:
        NodeCpuBudgetError: No writable cgroup v1 ``cpu`` controller at ``controller``.
    """
    if not (controller / "cpu.cfs_quota_us").exists() or not os.access(controller, os.W_OK):
        raise NodeCpuBudgetError(
            f"{controller}: no writable cgroup v1 cpu controller (needs root, in a container that "
            "mounts it read-write); run without --node-cpus"
        )


class NodeCpuBudgets:
    """One cgroup per node, each capped at ``cpus`` CPUs; a context manager that removes them.

    Args:
        nodes: How many nodes get a budget (numbered from 0).
        cpus: CPUs each node may use on average.
        name: The cgroup folder under the controller (unique per run: a second benchmark on the
            same machine must not share budgets).
        controller: The ``cpu`` controller's mount point.
    """

    def __init__(self, nodes: int, cpus: float, *, name: str, controller: Path = CPU_CONTROLLER) -> None:
        self._quota_us = quota_us(cpus)
        self._root = controller / name
        self._controller = controller
        self._groups = [self._root / f"node{node}" for node in range(nodes)]
        self._placed: set[int] = set()

    def __enter__(self) -> NodeCpuBudgets:
        require_controller(self._controller)
        self._root.mkdir()
        try:
            for group in self._groups:
                group.mkdir()
                (group / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (group / "cpu.cfs_quota_us").write_text(f"{self._quota_us}\n")
        except OSError:
            self.__exit__(None, None, None)  # NOTE: no half-made budgets left behind.
            raise
        return self

    def place(self, node: int, pid: int) -> None:
        """Move process ``pid`` (all its threads; its later children follow) into ``node``'s budget.

        A pid placed before is skipped, and one that has already exited is ignored: the benchmark
        places processes while it kills them.
        """
        if pid in self._placed:
            return
        try:
            (self._groups[node] / "cgroup.procs").write_text(f"{pid}\n")
        except ProcessLookupError:
            return
        self._placed.add(pid)

    def throttled_s(self) -> list[float]:
        """Seconds each node spent throttled so far (``cpu.stat`` ``throttled_time``)."""
        out = []
        for group in self._groups:
            stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
            out.append(int(stat["throttled_time"]) / 1e9)
        return out

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Move any process still in a budget back to the root group, then remove the groups."""
        for group in [*self._groups, self._root]:
            if not group.exists():
                continue
            for pid in (group / "cgroup.procs").read_text().split():
                try:
                    (self._controller / "cgroup.procs").write_text(f"{pid}\n")
                except ProcessLookupError:
                    continue
            group.rmdir()
