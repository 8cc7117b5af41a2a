"""The elastic worker loop: train, and on any failure notice or communication error recover in place.

``oobleck.runtime.worker`` hands over to :func:`main` when the agent set ``OOBLECK_CONTROL``.

Per membership generation G every worker does::

    publish (committed plan, next step) under ctl/gen<G>/state/<node>/<local>
    join the world of generation G (every member's ranks)        -- the rendezvous waits for all
    read every member's record (all set by now); survivors agree on the committed plan and step
    plan    = Planner.reconfigure(committed, lost=committed - members, joined=members - committed)
    engine.reconfigure(plan, transfers, G, rank_of_node, store)                 -- or configure at G=0
    redo the interrupted step

Assumptions:
- Every worker derives the same plan: same committed plan (the one the last completed step ran
  under; a step completes on all ranks or none, the engine commits after its last collective),
  same member list (from the master), same planner inputs (profile and max_nodes published once
  in the store), and the planning core is deterministic.
- A failure notice aborts the engine on the link's reader thread at once, so a training thread
  blocked in a collective fails within milliseconds, and one still computing stops before its next
  layer or backward (the executor checks the latch), not after the step's compute; a join is
  applied at the next step boundary (this worker aborts its groups there, so peers already in the
  next step redo it).
- When the planner finds no valid plan (a layer lost every replica), the job restarts from the
  latest complete checkpoint on the remaining nodes; with none, the worker fails the job.
- Every wait of a regroup is bounded and its expiry is a decision: a barrier that some members
  never reach asks the master to drop exactly those (``regroup`` with ``missing``); the planner
  claim is a lease owned by a member node, taken over once its owner leaves the membership.
- Records read from the store are validated (``control.store_records``): a malformed, stale or
  misplaced record is logged and treated as absent, never adopted.
- Steps need no master: the store is used only at a regroup, and its client reconnects (bounded,
  with backoff) to a master resumed on the same address; the planner is built once and cached.
- After each committed step the next regroup is readied off the critical path
  (:class:`~oobleck.runtime.recovery_cache.RegroupPrep`): a standby store client, and the re-plan
  of every single-node loss of the committed plan, so a single loss plans by lookup. The recovery
  record's ``regroup_ms`` times each phase (:mod:`oobleck.runtime.recovery_timing`).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from oobleck.errors import OobleckError, PlanningError, ReconfigurationError
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile
from oobleck.runtime.config import JobConfig, load_job_config
from oobleck.runtime.control.agent import NODE_ENV
from oobleck.runtime.control.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_complete,
    prune,
    write_shard,
)
from oobleck.runtime.control.devices import node_devices
from oobleck.runtime.control.generation_sync import (
    BARRIER_TIMEOUT_S,
    BarrierTimeoutError,
    collect_states,
    planner_inputs,
    publish_state,
    unpublished,
)
from oobleck.runtime.control.link import WorkerLink
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.server import is_loopback
from oobleck.runtime.control.sever import GroupSockets, abort_communicators
from oobleck.runtime.control.store import STORE_KEY_ENV
from oobleck.runtime.control.store_client import StoreClient
from oobleck.runtime.control.store_records import INPUTS_KEY, inputs_record, state_record
from oobleck.runtime.engine import CommunicationError, Engine, StepMetrics, job_planner, job_profile
from oobleck.runtime.engine.custom_model import CustomModel
from oobleck.runtime.recovery_cache import RegroupPrep
from oobleck.runtime.recovery_timing import RegroupClock, mark_engine_phases, phases_ms
from oobleck.runtime.run_log import RunLog, transfer_fields, write_error_file

logger = logging.getLogger(__name__)

FAULT_ENV = "OOBLECK_TEST_FAULT"
"""Deterministic fault injection for tests: ``after_claim`` makes the worker that wins the
generation-0 planner claim fail before publishing the inputs (the claim-then-die case)."""


QUIET_ERROR_WAIT_S = 5.0
"""After a communication error with no notice, wait this long before asking the master to regroup."""
NOTICE_SWITCH_INTERVAL_S = 0.0005
"""The worker's GIL switch interval (CPython's default: 5 ms). Why: the link thread that reads,
verifies and acts on a failure notice gives the GIL up at every syscall, and while the training
thread runs Python between kernels each re-take waits for a forced switch, up to the interval.
Measured (``benchmarks/recovery.py --part a --oobleck-only --repeats 6``, this against the default):
kill -> every survivor's notice latched, median 17 vs 23 ms; kill -> next step 80 vs 92 ms. It only
matters while a second thread wants the GIL, which in steady state none does (the link and waiter
threads block in syscalls), so training does not pay for it. Set by the worker's entry point only:
it is the interpreter's setting, not one a library object should impose on its host program."""
WORLD_WATCH_S = 0.05
"""How often a world rendezvous in progress re-checks that its generation is still the newest (the
check itself wakes at once on a notice; this only bounds how long the watcher outlives the join)."""


def finishes_step(*, next_step: int, configured: bool, ahead: dict[str, Any]) -> bool:
    """Whether this worker must finish step ``next_step`` from ``ahead``'s result (a roll-forward).

    ``ahead`` (the furthest survivor's state record) completed that step, so every rank of its
    world, this one included, entered the step's final all-reduce with synchronised gradients:
    only the update is missing here. Whether this worker ever *completed* a step does not matter.
    A joiner configured into the generation that ran the step holds layers (received ones) and
    gradients just like a survivor; judged by its completed steps (none), it would skip the update
    and keep its layers one step stale, which the planner (it counts the joiner as a holder) never
    repairs: the losses leave the fault-free run's. A worker never configured holds no state.

    Args:
        next_step: The step this worker would run next.
        configured: Whether this worker's engine was configured into a plan (holds layers).
        ahead: The furthest survivor's state record (``step``: the step it would run next).
    """
    return configured and next_step < int(ahead["step"])


class ElasticLoop:
    """One worker's training loop across membership generations."""

    def __init__(
        self,
        job: JobConfig,
        run_dir: Path,
        *,
        node: int,
        local_rank: int,
        timeout_s: float,
        model: CustomModel | None = None,
    ) -> None:
        """Connect to the agent link and the store; build the engine (no layers yet).

        Args:
            job: The validated job.
            run_dir: Where metrics, ledger and checkpoints go.
            node: This worker's stable node id.
            local_rank: Its index on the node.
            timeout_s: Collective timeout of the engine (a backstop; notices normally come first).
            model: A user's own model (``oobleck.api``) instead of the job's HF adapter.
        """
        self.job, self.run_dir, self.node, self.local_rank = job, run_dir, node, local_rank
        if is_loopback(os.environ.get("MASTER_ADDR", "")) and "GLOO_SOCKET_IFNAME" not in os.environ:
            # NOTE: gloo binds its pair listeners to the address this host name resolves to, which
            # on a cluster machine is routable; a loopback job keeps them on loopback.
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        self._fault_epoch = 0
        self._aborting = threading.Lock()
        """Held for the whole of an abort: the training thread waits out one that another thread runs."""
        self.store: dist.Store | None = None
        """This generation's store client (a fresh one per regroup; abandoned by an abort)."""
        self.engine = Engine(
            job, node=node, local_rank=local_rank, timeout=timedelta(seconds=timeout_s), model=model
        )
        self._timeout = timedelta(seconds=timeout_s)
        self._sockets = GroupSockets()
        """The sockets each generation's build created (store client, groups): what an abort cuts."""
        self.link = WorkerLink.from_env(on_failure=self._on_failure)
        self.log = RunLog(run_dir, node=node, ledger=job.data.ledger)
        self.ckpt_dir = Path(job.checkpoint.dir) if job.checkpoint.dir else run_dir / "checkpoints"
        self.committed: Plan | None = None
        self.plan: Plan | None = None
        self.generation = -1
        self.next_step = 0
        self._planner: Planner | None = None
        self._planner_inputs: str | None = None
        """The validated planner inputs this worker plans with, re-published into a store that lost
        them (a resumed master starts empty), so a node joining later plans alike."""
        self._last: dict[str, Any] | None = None
        self.clock = RegroupClock()
        self._unblocked_at: float | None = None
        """When the training thread last left a step on a failure (recovery timing)."""
        self.prep = RegroupPrep(
            lambda: StoreClient(*self._store_address(), timeout=self._timeout, connect_s=0.0)
        )

    # ------------------------------------------------------------------ main loop
    def _on_failure(self, membership: Membership) -> None:
        # NOTE: abort first, log after: the peers blocked on this rank unblock a log write sooner.
        self._abort(f"generation {membership.generation}: {membership.reason}")
        logger.warning(
            "[node %d] notice: generation %d, %s; process groups aborted",
            self.node,
            membership.generation,
            membership.reason,
        )

    def _abort(self, reason: str) -> None:
        """Fail this generation's communication: destroy its groups, abandon its store, cut its sockets.

        Called on a failure notice, at a step boundary before a join, and after any communication
        error: a peer blocked on *this* rank (e.g. further along a gloo ring from the rank that
        failed first) then fails at once too, so the cascade reaches every rank in milliseconds
        instead of after the collective timeout.

        The store client is abandoned too: a rank blocked in a rendezvous read (waiting for a peer
        that died) wakes at once, and every generation starts on a fresh client. Only what the
        generation's builds opened is cut; the standby store client (the next regroup's, connected
        during steady state) and the user's sockets stay open.

        The cut comes after the destroy, although gloo's destroy takes tens of ms (each healthy
        pair waits for a tick of gloo's event loop) and far less once every socket is cut: with the
        cut first, a worker stopped for good right after its abort, before its next world's
        rendezvous, once in ~40 benchmark recoveries (no stack was caught; docs/assumptions.md has
        the figures and a candidate cause in gloo), and a stuck worker costs two barrier timeouts
        and a healthy node, far more than the wait saved.
        """
        with self._aborting:
            self._fault_epoch += 1
            abort_communicators(self.engine.comm.backend)  # NOTE: NCCL only, and before the destroy.
            self.engine.abort(reason)
            store = self.store
            if isinstance(store, StoreClient):
                store.abandon()
            self._sockets.sever()

    def _after_failed_step(self, epoch: int, reason: str) -> None:
        """Abort unless an abort since ``epoch`` (a notice, on the link thread) already did; wait it out.

        The training thread unblocks in the middle of the link thread's abort (when the sockets
        are cut): it must not start the next build (a new store client, new groups) before that
        abort has finished, or the abort would take the new generation's client for the old one.
        """
        if self._fault_epoch == epoch:
            self._abort(reason)  # NOTE: this rank failed first: cascade to the peers blocked on it.
            return
        with self._aborting:
            pass

    def _store_address(self) -> tuple[str, int, bytes]:
        """The master's store (``MASTER_ADDR``/``MASTER_PORT``) and its key (from the agent)."""
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        key = os.environ.get(STORE_KEY_ENV, "")
        if not key:
            raise RuntimeError(f"{STORE_KEY_ENV} is not set: a worker must be started by an oobleck agent")
        return host, port, bytes.fromhex(key)

    def _connect_store(self) -> dist.Store:
        """A fresh client of the master's store."""
        return StoreClient(*self._store_address(), timeout=self._timeout)

    def run(self) -> None:
        """Train every step of the job, recovering from failures and applying joins.

        Raises:
            PlanningError: No plan and no checkpoint can continue the job.
            RuntimeError: The agent link closed or a barrier timed out.
        """
        self.link.send_ready()
        while self.next_step < self.job.steps:
            target = self.link.latest
            if target is None or self.node not in target.members:
                if self.generation >= 0:
                    raise RuntimeError(
                        f"node {self.node} was removed from the job ({target and target.reason})"
                    )
                if self.link.wait_newer(-1 if target is None else target.generation, None) is None:
                    raise RuntimeError("the agent link closed before this node was admitted")
                continue
            if target.generation != self.generation and not self._regroup(target):
                continue
            epoch = self._fault_epoch
            try:
                metrics = self.engine.train_step(self.next_step)
            except Exception as exc:
                if not self._aborted(exc, epoch):
                    raise
                self._unblocked_at = time.time()
                self._after_failed_step(epoch, str(exc))
                logger.warning("[node %d step=%d] %s", self.node, self.next_step, exc)
                self._await_change(self.generation)
                continue
            self._record_step(metrics)
            self.prep.after_step(self._planner, self.committed)
            self.next_step += 1
            self._maybe_checkpoint()
            latest = self.link.latest
            if (
                latest is not None
                and latest.generation != self.generation
                and self.next_step < self.job.steps
            ):
                self._abort(f"generation {latest.generation} at the step boundary")
        self.engine.close()
        self.link.close()

    def _aborted(self, exc: Exception, epoch: int) -> bool:
        """Whether ``exc`` is the fallout of a failure, not a bug to report.

        A communication or store error is; so is anything raised after an abort since ``epoch``
        (the link thread destroyed the groups under the training thread). A latched error of an
        earlier attempt does not count: it would turn a real error (a profiler failure) into an
        endless regroup. A planning or config error is never one: retrying cannot fix it.
        """
        if isinstance(exc, OobleckError):
            return False
        if isinstance(exc, CommunicationError | dist.DistError | ConnectionError | BarrierTimeoutError):
            return True
        return self._fault_epoch != epoch and self.engine.comm.error is not None

    def _await_change(self, generation: int, missing: list[int] | None = None) -> None:
        """Wait for a generation newer than ``generation``; ask the master for one if none comes.

        Args:
            generation: The generation that failed here.
            missing: Members that never reached its barrier; the master drops them (asked at once).
        """
        if missing:
            logger.warning("[node %d] asking the master to drop nodes %s", self.node, missing)
            self.link.request_regroup(generation, missing)
        elif self.link.wait_newer(generation, QUIET_ERROR_WAIT_S) is not None:
            return
        else:
            logger.warning("[node %d] communication error without a notice; asking for a regroup", self.node)
            self.link.request_regroup(generation)
        if self.link.wait_newer(generation, BARRIER_TIMEOUT_S) is None:
            raise RuntimeError(f"no new generation after a communication error at generation {generation}")

    # ------------------------------------------------------------------ generations
    def _superseded(self, target: Membership) -> bool:
        latest = self.link.latest
        return latest is not None and latest.generation > target.generation

    def _regroup(self, target: Membership) -> bool:
        """Move to generation ``target``; False when it failed or was superseded (try the newest)."""
        noticed = self.link.received_at.get(target.generation, time.time())
        self.log.regroup_started()
        self.clock.reset(noticed)
        if self._unblocked_at is not None and self._unblocked_at >= noticed:
            self.clock.mark("unblocked", self._unblocked_at)
        self.clock.mark("regroup")
        epoch = self._fault_epoch
        try:
            # NOTE: the watchdog first: a worker that stopped for good after its abort, before its
            # next world (seen in CI), left no stack, its hang being outside the watched block.
            with (
                stacks_if_stuck(stuck_build_after_s(self._timeout.total_seconds(), BARRIER_TIMEOUT_S)),
                self._sockets.building(),
            ):
                # NOTE: the store is inside the try: a notice arriving meanwhile abandons it.
                if isinstance(self.store, StoreClient):
                    self.store.abandon()
                self.store = store = self.prep.take_store() or self._connect_store()
                self.clock.mark("store")
                adopted = self._adopt(store, target)
        except Exception as exc:
            if not self._aborted(exc, epoch):
                raise
            logger.warning("[node %d] regroup at generation %d failed: %s", self.node, target.generation, exc)
            self._abort(str(exc))
            self._await_change(
                target.generation, exc.missing if isinstance(exc, BarrierTimeoutError) else None
            )
            return False
        if adopted is None:
            return False
        plan_ready, timing = adopted
        self.generation = target.generation
        if self.engine.rank == 0 and self.plan is not None:
            self.log.plan_adopted(target, self.plan)  # NOTE: plan.json per generation, for `oobleck status`.
        if target.generation > 0:
            self.log.recovery_started(target, noticed=noticed, plan_ready=plan_ready, timing=timing)
        logger.info(
            "[node %d] generation %d running: %d pipelines, step %d (regroup ms: %s)",
            self.node,
            target.generation,
            len(self.plan.pipelines) if self.plan else 0,
            self.next_step,
            ", ".join(f"{phase} {ms:g}" for phase, ms in phases_ms(self.clock.marks).items()),
        )
        return True

    def _adopt(self, store: dist.Store, target: Membership) -> tuple[float, dict[str, Any]] | None:
        """Agree with the members on the committed plan and step, then (re)configure the engine.

        Returns:
            When the plan was ready and the engine's measured phases; None if superseded.

        Raises:
            ReconfigurationError: the survivors are more than one step apart (a bug, not a failure).
        """
        if self._planner_inputs is not None:
            # NOTE: before this worker's state record: a joiner reads the inputs only after the
            # barrier, which needs that record, so it never claims an empty (resumed) store.
            store.compare_set(INPUTS_KEY, "", self._planner_inputs)
        plan = None if self.committed is None else self.committed.to_dict()
        record = state_record(
            generation=target.generation,
            node=self.node,
            local_rank=self.local_rank,
            plan=plan,
            step=self.next_step,
            last=self._last,
        )
        if self._superseded(target):
            return None
        publish_state(store, target.generation, node=self.node, local_rank=self.local_rank, record=record)
        rank_of_node = target.rank_of_node()
        self._join_world(store, target, rank_of_node)
        self.clock.mark("init_group")
        # NOTE: every member publishes before it joins the world, so once the world is up every
        # record is in the store: this read waits for none of them (one round trip).
        states = collect_states(store, target, node=self.node, superseded=lambda: self._superseded(target))
        if states is None:
            return None
        self.clock.mark("barrier")
        planner = self._get_planner(store, target)
        if planner is None or self._superseded(target):
            return None
        survivors = [s for s in states if s["plan"] is not None]
        if not survivors:
            checkpoint = latest_complete(self.ckpt_dir, self.engine.adapter.num_layers)
            # NOTE: a re-run that resumes may have fewer nodes than the first run had.
            make_plan = planner.plan if checkpoint is None else planner.restart_plan
            self.plan = make_plan(target.members)
            plan_ready = time.time()
            self.engine.configure(self.plan, target.generation, rank_of_node, store)
            self.next_step = self._resume_from(checkpoint)
            return plan_ready, {}
        # NOTE: the committed plan is the one the furthest survivor's last step ran under; a rank
        # one step behind failed only in that step's final all-reduce and rolls forward to it.
        ahead = max(survivors, key=lambda s: s["step"])
        committed = Plan.from_dict(ahead["plan"], gpus_per_node=target.slots)
        if min(s["step"] for s in survivors) < ahead["step"] - 1:
            raise ReconfigurationError(
                f"survivors are more than one step apart: {[s['step'] for s in survivors]}"
            )
        if finishes_step(next_step=self.next_step, configured=self.engine.plan is not None, ahead=ahead):
            self._roll_forward(ahead["last"])
        self.next_step = ahead["step"]
        return self._reconfigure(store, planner, committed, target, rank_of_node)

    def _join_world(self, store: dist.Store, target: Membership, rank_of_node: dict[int, int]) -> None:
        """Join the generation's world before the plan is agreed on (:meth:`Engine.join_world`).

        Raises:
            BarrierTimeoutError: the rendezvous timed out without an abort (no newer notice) while
                some members had not even published their state record: those are named, as the
                state barrier names them, so the master drops exactly them.
            CommunicationError: the rendezvous failed otherwise (e.g. at once, a member dying in
                it): the notice of that loss decides, not a guess at who is missing.
        """
        epoch, start = self._fault_epoch, time.monotonic()
        joined = threading.Event()
        threading.Thread(
            target=abandon_when_superseded,
            args=(self.link, store, target.generation, joined),
            name="world-watch",
            daemon=True,
        ).start()
        try:
            self.engine.join_world(target.generation, rank_of_node, store, target.world_size)
        except CommunicationError as exc:
            timed_out = time.monotonic() - start >= self._timeout.total_seconds()
            missing = unpublished(store, target) if timed_out and self._fault_epoch == epoch else []
            if missing:
                raise BarrierTimeoutError(target.generation, missing, "state record") from exc
            raise
        finally:
            joined.set()

    def _reconfigure(
        self,
        store: dist.Store,
        planner: Planner,
        committed: Plan,
        target: Membership,
        rank_of_node: dict[int, int],
    ) -> tuple[float, dict[str, Any]]:
        lost = tuple(n for n in committed.nodes if n not in target.members)
        joined = tuple(n for n in target.members if n not in committed.nodes)
        try:
            change, cached = self.prep.reconfigure(planner, committed, lost, joined)
        except ReconfigurationError as exc:
            return self._restart_from_checkpoint(store, planner, target, rank_of_node, exc)
        self.plan = change.plan
        plan_ready = time.time()
        self.clock.mark("plan", plan_ready)
        note = planner.manual_note(change.plan)
        if note is not None:
            logger.info("[node %d] %s", self.node, note)
        measured = self.engine.reconfigure(
            change.plan, change.transfers, target.generation, rank_of_node, store, source_plan=committed
        )
        mark_engine_phases(self.clock, transfer_s=measured.transfer_state_s)
        return plan_ready, {
            "restart": False,
            "rebuild_groups_s": measured.rebuild_groups_s,
            "transfer_state_s": measured.transfer_state_s,
            "plan_cached": cached,
            "regroup_ms": phases_ms(self.clock.marks),
            **transfer_fields(change.plan, change.transfers, measured.copies),
        }

    def _restart_from_checkpoint(
        self,
        store: dist.Store,
        planner: Planner,
        target: Membership,
        rank_of_node: dict[int, int],
        cause: Exception,
    ) -> tuple[float, dict[str, Any]]:
        checkpoint = latest_complete(self.ckpt_dir, self.engine.adapter.num_layers)
        if checkpoint is None:
            raise PlanningError(
                f"{cause}; and no complete checkpoint in {self.ckpt_dir} to restart from "
                "(set checkpoint.every_steps)"
            ) from cause
        logger.warning(
            "[node %d] %s; restarting from the checkpoint at step %d", self.node, cause, checkpoint.step
        )
        self.plan = planner.restart_plan(target.members)
        plan_ready = time.time()
        start = time.perf_counter()
        self.engine.configure(self.plan, target.generation, rank_of_node, store)
        groups = time.perf_counter()
        self.engine.load_state_tensors(checkpoint.load())
        self.next_step = checkpoint.step
        return plan_ready, {
            "restart": True,
            "checkpoint_step": checkpoint.step,
            "rebuild_groups_s": groups - start,
            "transfer_state_s": time.perf_counter() - groups,
            **transfer_fields(self.plan, (), ()),
        }

    def _resume_from(self, checkpoint: Checkpoint | None) -> int:
        """Load the run directory's newest complete checkpoint, if it has one (a re-run resumes).

        Returns:
            The step to start at: the checkpoint's, or 0.
        """
        if checkpoint is None:
            return 0
        self.engine.load_state_tensors(checkpoint.load())
        logger.warning("[node %d] resuming from the checkpoint at step %d", self.node, checkpoint.step)
        return checkpoint.step

    def _get_planner(self, store: dist.Store, target: Membership) -> Planner | None:
        """The job's planner from the inputs one member publishes (a measured profile differs
        between processes, and every worker must plan alike); built once, cached for the run.

        Returns:
            The planner, or None when a newer generation superseded ``target`` meanwhile.
        """
        if self._planner is None:
            inputs = planner_inputs(
                store,
                target,
                node=self.node,
                local_rank=self.local_rank,
                publish=lambda: self._publish_inputs(store, target),
                superseded=lambda: self._superseded(target),
            )
            if inputs is None:
                return None
            profile = ModelProfile.from_dict(inputs["profile"])
            devices = node_devices(target.slots, self.job.hardware, self.job.gpus_per_node)
            self._planner = job_planner(self.job, profile, inputs["max_nodes"], devices)
            self._planner_inputs = inputs_record(
                inputs["profile"], inputs["max_nodes"], inputs["node"], inputs["generation"]
            )
        return self._planner

    def _publish_inputs(self, store: dist.Store, target: Membership) -> None:
        """Compute the planner inputs under the claim and publish them."""
        fault = os.environ.get(FAULT_ENV, "")
        if fault == "after_claim" and target.generation == 0:
            raise RuntimeError(
                f"injected fault ({FAULT_ENV}={fault}): failing while holding the planner claim"
            )
        profile = job_profile(self.job, self.engine.adapter)
        store.set(
            INPUTS_KEY, inputs_record(profile.to_dict(), len(target.members), self.node, target.generation)
        )

    # ------------------------------------------------------------------ records
    def _record_step(self, metrics: StepMetrics) -> None:
        self.committed = self.plan
        self._last = {k: v for k, v in metrics.to_dict().items() if k not in ("sample_ids", "pipeline")}
        self._log_step(self._last, metrics.pipeline, metrics.sample_ids)

    def _roll_forward(self, done: dict[str, Any]) -> None:
        """Finish step ``done["step"]``, which failed here only in its last all-reduce.

        If any survivor completed a step, every rank entered that step's final loss/norm all-reduce,
        so every survivor already holds the step's synchronised gradients; only the global norm is
        missing, and the survivor that completed the step published it. Applying the same AdamW
        update here makes all survivors agree without redoing (and double-applying) the step.
        """
        step = int(done["step"])
        if self.next_step != step:
            raise RuntimeError(f"node {self.node} is at step {self.next_step}, cannot finish step {step}")
        self.engine.apply_update(float(done["lr"]), float(done["grad_norm"]))
        self.committed = self.engine.plan
        info = self.engine.info
        ids: tuple[int, ...] = ()
        if info is not None and info.records_samples:  # NOTE: not TP rank 1 too (a repeat)
            size = self.job.microbatch_size
            first, count = info.first_microbatch * size, info.microbatches * size
            ids = tuple(self.engine.sampler.step_samples(step, first, count))
        self._last = done
        self._log_step(done, None if info is None else info.pipeline, ids)
        self.next_step = step + 1
        logger.warning(
            "[node %d] finished step %d from a survivor's result (failed in its last all-reduce)",
            self.node,
            step,
        )

    def _log_step(self, record: dict[str, Any], pipeline: int | None, sample_ids: tuple[int, ...]) -> None:
        self.log.step_done(
            record,
            generation=self.generation,
            pipeline=pipeline,
            sample_ids=sample_ids,
            reporter=self.engine.rank == 0,
        )

    def _maybe_checkpoint(self) -> None:
        """Write this rank's shard when a checkpoint is due (pipeline 0 only), then prune.

        Raises:
            CheckpointError: the shard cannot be written; the master is told it is a job error
                (one clear failure), not a lost node.
        """
        every = self.job.checkpoint.every_steps
        info = self.engine.info
        if every <= 0 or self.next_step % every or info is None or info.pipeline != 0:
            return
        try:
            write_shard(
                self.ckpt_dir,
                self.next_step,
                node=self.node,
                local_rank=self.local_rank,
                layers=list(info.layers),
                tensors=self.engine.state_tensors(),
            )
        except CheckpointError as exc:
            self.link.report_job_error(str(exc))
            raise
        keep = self.job.checkpoint.keep
        if keep is not None:
            prune(self.ckpt_dir, self.engine.adapter.num_layers, keep)


def stuck_build_after_s(worker_timeout_s: float, barrier_timeout_s: float) -> float:
    """How long a generation's build may last before its threads' stacks are dumped.

    Longer than one worker timeout, the bound of each wait in a build (a build that merely waited
    out one slow peer is no bug), and shorter than what the peers wait before they drop a node
    stuck in its build: their world rendezvous (one worker timeout), then the next generation's
    state barrier. So the stuck node reports before it is killed (a fixed three worker timeouts
    did not: a benchmark worker stuck so was killed 245 s in, before its 360 s dump).
    """
    return worker_timeout_s + barrier_timeout_s / 2


@contextlib.contextmanager
def stacks_if_stuck(after_s: float) -> Iterator[None]:
    """Write every thread's Python stack to stderr (the agent's log) once if the block outlasts
    ``after_s``; the block itself goes on. Each wait of a generation's build is bounded by the
    worker timeout, so a build stuck for several of them is a bug, and its stacks are the report."""
    faulthandler.dump_traceback_later(after_s, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def abandon_when_superseded(
    link: WorkerLink, store: dist.Store, generation: int, joined: threading.Event
) -> None:
    """Until ``joined``: abandon ``store`` once a generation newer than ``generation`` is announced.

    The world rendezvous blocks in C++ and cannot poll for a newer generation as the state barrier
    does. A newer notice that removes nodes abandons the store itself (the abort), but one published
    just before the regroup took its store client, or a join (no abort), would leave the rank
    waiting in a world its peers have left, until the store timeout.
    """
    while not joined.is_set() and not link.closed:
        if link.wait_newer(generation, WORLD_WATCH_S) is not None:
            if not joined.is_set() and isinstance(store, StoreClient):
                store.abandon()
            return


def main(args: argparse.Namespace, model: CustomModel | None = None) -> int:
    """Run the elastic loop for the worker the agent started.

    Args:
        args: The worker's parsed flags (``config``, ``run_dir``, ``timeout_s``).
        model: A user's own model and templates (``oobleck.api.main``); None: the job's HF adapter.

    Returns:
        0 when the job's last step completed here; 1 on any error (written to the error file).
    """
    sys.setswitchinterval(NOTICE_SWITCH_INTERVAL_S)
    try:
        job = load_job_config(args.config)
        if model is not None:
            job = model.job_for(job)
        run_dir = Path(args.run_dir)
        node, local_rank = int(os.environ[NODE_ENV]), int(os.environ.get("LOCAL_RANK", "0"))
        ElasticLoop(
            job,
            run_dir,
            node=node,
            local_rank=local_rank,
            timeout_s=float(getattr(args, "timeout_s", 60.0)),
            model=model,
        ).run()
    except Exception as exc:
        logger.exception("worker failed")
        write_error_file(exc)
        return 1
    return 0
