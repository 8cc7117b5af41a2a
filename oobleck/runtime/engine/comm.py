"""Communication with a latched error: the first failure is recorded, later calls fail fast.

Every torch.distributed call of the engine goes through :class:`Comm`. A failed collective or
point-to-point transfer (a peer died, its process groups were destroyed, a timeout) raises
:class:`CommunicationError` and latches it: every later call raises the same error at once, so a
step cannot half-continue on a broken world. :meth:`Comm.abort` destroys the process groups, which
with gloo unblocks every peer waiting on this rank (its sockets close), so failures cascade in
well under a second.

Assumptions:
    * One default process group per membership generation; ``reset`` is called after a new one is
      initialised.
    * NCCL when CUDA is available, gloo otherwise; one device per local rank.
    * Subgroups are created in rounds of disjoint groups (:mod:`oobleck.planning.groups`): on gloo
      one ``new_group`` call per group on every rank (non-members return at once), on NCCL one
      split of the world per round. A rank holds only the groups it is a member of.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from oobleck.planning.groups import creation_rounds

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ABORT_CHECK_S = 0.05
"""Backstop of how often a waiting training thread re-checks the latch; an abort from another
thread wakes it at once (:meth:`Comm._latch` sets the wait's event), so this is not its reaction time."""


class _Job:
    """Work handles a :class:`_Waiter` waits on, and how that wait ended."""

    def __init__(self, works: Sequence[Any]) -> None:
        self.works = works
        self.wake = threading.Event()
        """Set once the works finished, or by a latch to wake the training thread early."""
        self.finished = threading.Event()
        """Set (before :attr:`wake`) once every work's wait returned, or one raised :attr:`error`."""
        self.error: BaseException | None = None


class _Waiter:
    """A daemon thread that blocks in ``work.wait()`` on behalf of the training thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        threading.Thread(target=self._loop, name="oobleck-comm-wait", daemon=True).start()

    def submit(self, works: Sequence[Any]) -> _Job:
        job = _Job(works)
        self.idle.clear()
        self._jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                for work in job.works:
                    work.wait()
            except Exception as error:
                job.error = error
            finally:
                job.finished.set()
                job.wake.set()
                if self._jobs.empty():
                    self.idle.set()


class CommunicationError(RuntimeError):
    """A collective or point-to-point operation failed; the world of this generation is broken.

    Not an :class:`~oobleck.errors.OobleckError`: it is not the user's mistake. The elastic runtime
    catches it, aborts, re-plans and calls ``Engine.reconfigure``.
    """


def default_backend() -> str:
    """``nccl`` when CUDA is available, ``gloo`` otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def default_device(local_rank: int) -> torch.device:
    """The device of a local rank: ``cuda:<local_rank % visible GPUs>`` or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


class Comm:
    """Process-group lifecycle plus latched error handling for one rank.

    Thread safety: :meth:`abort` may be called from another thread (a control-plane listener)
    while the training thread waits in a collective; with gloo the wait then raises within
    ``_ABORT_CHECK_S``. (NCCL waits are not interrupted this way; aborting destroys the communicator.)
    """

    def __init__(self, backend: str | None = None, timeout: timedelta = timedelta(seconds=60)) -> None:
        self.backend = backend or default_backend()
        self.timeout = timeout
        self.error: CommunicationError | None = None
        self._lock = threading.Lock()
        self._groups: dict[tuple[int, ...], Any] = {}
        self._waiter: _Waiter | None = None
        # Subgroups by splitting the world (NCCL, device bound at init) instead of member-only.
        self._splits = False
        self._wake: threading.Event | None = None
        """The event the training thread is waiting on, set by a latch so an abort wakes it at once."""
        self.world: tuple[int, ...] | None = None
        """The key :meth:`init` was given for the default group now up (None: none is up)."""

    def init(
        self,
        store: dist.Store,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        key: tuple[int, ...] | None = None,
    ) -> None:
        """Initialise the default process group of a generation on ``store`` (already prefixed).

        Args:
            store: The generation's store.
            rank: This rank.
            world_size: Ranks of the world.
            device: This rank's device (NCCL binds it).
            key: What the caller names this world by (:attr:`world` until it is destroyed), so a
                world joined ahead of its plan is reused rather than rebuilt.

        Raises:
            CommunicationError: the rendezvous failed or timed out.
        """
        self.destroy()
        self.error = None
        self._groups = {}
        self._waiter = None  # NOTE: an old waiter may still be stuck on the previous world.
        options: dict[str, Any] = {}
        if self.backend == "nccl":
            options["device_id"] = device
        try:
            dist.init_process_group(
                self.backend, store=store, rank=rank, world_size=world_size, timeout=self.timeout, **options
            )
        except Exception as error:
            if not dist.is_initialized():
                # NOTE: torch names the default group by a process-wide counter, which this failed
                # init already advanced and which only destroy_process_group() resets. With no
                # group to destroy, reset it as that would: else this rank's next world would
                # rendezvous under another name than its peers' (a hang until the store timeout).
                distributed_c10d._world.group_count = 0
            raise self._latch("init_process_group", error) from error
        self._splits = self.backend == "nccl"
        self.world = key

    def new_groups(self, rank_sets: Sequence[tuple[int, ...]]) -> None:
        """Create the groups of ``rank_sets`` in rounds of disjoint groups; keep this rank's own.

        Collective: every rank of the world passes the same ``rank_sets`` in the same order (the
        topology's). :func:`~oobleck.planning.groups.creation_rounds` orders the groups so that
        those of one round are disjoint; every rank calls ``new_group`` for every group in that
        order, which for a non-member returns at once (torch 2.13 runs no barrier after a group
        unless ``TORCH_DIST_INIT_BARRIER=1``, which the runtime never sets), while the members
        connect. A rank therefore waits only for the members of its own groups, the groups of a
        round are created at the same time, and a rebuild lasts as many group creations as there
        are rounds rather than one per group of the world.

        NOTE: ``use_local_synchronization=True`` (member-only calls) is not usable here: torch
        names such a group by a hash of its ranks *and of how many groups the process already
        has*, so members with different numbers of earlier groups pick different names and wait
        for each other until the timeout (seen at 8 ranks with a real plan's overlapping groups).

        Raises:
            CommunicationError: a member died or timed out while a group was created.
        """
        rank = dist.get_rank()
        world = tuple(range(dist.get_world_size()))
        for round_ in creation_rounds(rank_sets):
            if not self._splits and all(tuple(rank_sets[index]) == world for index in round_):
                # NOTE: a group of every rank is the default group: reuse it instead of building
                # (and connecting) the same mesh again, which is the whole subgroup phase of a
                # data-parallel recovery. Every rank decides alike (same sets, same world). gloo
                # keeps collective and point-to-point slots apart, and every member issues the
                # world group's collectives in the same (topology) order, so sharing is safe.
                self._groups[world] = dist.group.WORLD
                continue
            if self._splits:
                self._split_round([tuple(rank_sets[index]) for index in round_], rank)
                continue
            for index in round_:
                ranks = tuple(rank_sets[index])
                group = self.call("new_group", dist.new_group, list(ranks), timeout=self.timeout)
                if rank in ranks:
                    self._groups[ranks] = group

    def _split_round(self, disjoint: list[tuple[int, ...]], rank: int) -> None:
        """NCCL with a bound device: one ``split_group`` of the world per round.

        NOTE: with an eagerly initialised NCCL world torch creates subgroups by ``ncclCommSplit``
        of the world's communicator, a collective of *every* rank, so member-only creation would
        hang; one split per round (the round's groups are disjoint, as a split requires) keeps the
        rounds as few as on gloo. Unproven on multi-rank hardware (no multi-GPU machine here).
        """
        group = self.call(
            "split_group",
            dist.split_group,
            split_ranks=[list(ranks) for ranks in disjoint],
            timeout=self.timeout,
        )
        mine = next((ranks for ranks in disjoint if rank in ranks), None)
        if mine is not None:
            self._groups[mine] = group

    def group(self, ranks: tuple[int, ...]) -> Any:
        """The process group made for ``ranks`` by :meth:`new_groups`; only on its members.

        Raises:
            CommunicationError: the latched error, when an abort (from another thread) destroyed
                the groups while the training thread was between two collectives.
            KeyError: this rank is not in ``ranks`` (it never created that group).
        """
        group = self._groups.get(ranks)
        if group is None:
            if self.error is not None:
                raise self.error
            raise KeyError(ranks)
        return group

    def raise_if_failed(self) -> None:
        """Raise the latched error, if any; a check between two pieces of a step's compute.

        A failure notice latches from another thread while the training thread computes; without
        this check it would finish the whole step's forwards and backwards (most of a step on a
        data-parallel plan, which has no transfer before the gradient all-reduce) before its next
        collective saw the error. Reading one attribute, it costs nothing per layer.

        Raises:
            CommunicationError: the latched error.
        """
        error = self.error
        if error is not None:
            raise error

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one distributed operation; a failure is latched and raised as CommunicationError."""
        if self.error is not None:
            raise self.error
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise self._latch(what, error) from error

    def run(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run one collective asynchronously and wait for it (abortable; see :meth:`wait`)."""
        self.wait(what, [self.call(what, fn, *args, async_op=True, **kwargs)])

    def wait(self, what: str, works: Sequence[Any]) -> None:
        """Wait for asynchronous work handles; a failure is latched.

        With gloo a daemon thread does the blocking ``work.wait()`` while this thread checks the
        latch, so an :meth:`abort` from another thread ends a wait on a peer that hangs (a stopped
        process keeps its sockets open and would otherwise block us until the timeout). The
        abandoned wait ends when the old world's sockets close or time out.

        Works that completed return normally even when an abort latched meanwhile: their result is
        as final as it was before the abort, and the next call raises the latch. Raising it here
        would undo a completed step on this rank: a loss notice that lands as the step's last
        all-reduce completes, before this thread wakes, left the step uncommitted here, to be
        redone or rolled forward, although its update was ready to apply.
        """
        if not works:
            return
        if self.backend != "gloo":
            for work in works:
                self.call(what, work.wait)
            return
        if self.error is not None:
            raise self.error
        if self._waiter is None:
            self._waiter = _Waiter()
        job = self._waiter.submit(works)
        self._wake = job.wake
        # NOTE: re-check after publishing the event: a latch between the check above and here
        # would otherwise have had no event to set.
        while self.error is None and not job.wake.wait(_ABORT_CHECK_S):
            pass
        self._wake = None
        if not job.finished.is_set() and all(work.is_completed() for work in works):
            # NOTE: woken by a latch as the works completed: the waiter returns them at once.
            job.finished.wait(self.timeout.total_seconds())
        if not job.finished.is_set():
            raise self._latch(what, RuntimeError("aborted while waiting"))  # NOTE: the first latch wins.
        if job.error is not None:
            raise self._latch(what, job.error)

    def _latch(self, what: str, error: BaseException) -> CommunicationError:
        with self._lock:
            if self.error is None:
                self.error = CommunicationError(f"{what} failed on rank {self._rank()}: {error}")
                logger.warning("[rank %s] communication error latched: %s", self._rank(), self.error)
            wake = self._wake
            if wake is not None:
                wake.set()  # NOTE: the waiting training thread sees the error now, not a poll later.
            return self.error

    def abort(self, reason: str = "aborted") -> None:
        """Latch ``reason`` (unless an error is already latched) and destroy all process groups.

        Safe to call twice and from another thread; never raises.
        """
        self._latch(reason, RuntimeError(reason))
        self.destroy()

    def close(self, drain_s: float = 10.0) -> None:
        """End of job: give an in-flight wait up to ``drain_s`` to end, then destroy the groups.

        A wait still blocked in C++ when the interpreter exits aborts the process, so a worker
        that aborted on a hung peer should close (or leave with ``os._exit``). Never raises.
        """
        # NOTE: drain first: a wait still in flight on a healthy world ends at once, whereas one
        # whose group was destroyed under it may never end.
        if self._waiter is not None:
            self._waiter.idle.wait(drain_s)
        self.destroy()

    def destroy(self) -> None:
        """Destroy the process groups of this generation, if any; never raises."""
        # NOTE: no lock held here: a training thread failing inside a collective while we tear
        # down must be able to latch its own error without waiting for us.
        self._groups = {}
        self.world = None
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as error:  # NOTE: a broken world may fail to tear down; ignore.
                logger.warning("destroy_process_group failed: %s", error)

    @staticmethod
    def _rank() -> str:
        if dist.is_available() and dist.is_initialized():
            return str(dist.get_rank())
        return os.environ.get("RANK", "?")
