"""The elastic worker loop: train, and on any failure notice or communication error recover in place.

``oobleck.runtime.worker`` hands over to :func:`main` when the agent set ``OOBLECK_CONTROL``.

Per membership generation G every worker does::

    publish (committed plan, next step) under ctl/gen<G>/state/<node>/<local>   -- store barrier
    read every member's record; survivors agree on the committed plan and step
    plan    = Planner.reconfigure(committed, lost=committed - members, joined=members - committed)
    engine.reconfigure(plan, transfers, G, rank_of_node, store)                 -- or configure at G=0
    redo the interrupted step

Assumptions:
- Every worker derives the same plan: same committed plan (the one the last completed step ran
  under; a step completes on all ranks or none, the engine commits after its last collective),
  same member list (from the master), same planner inputs (profile and max_nodes published once
  in the store), and the planning core is deterministic.
- A failure notice aborts the engine on the link's reader thread at once, so a training thread
  blocked in a collective fails within milliseconds; a join is applied at the next step boundary
  (this worker aborts its groups there, so peers already in the next step redo it).
- When the planner finds no valid plan (a layer lost every replica), the job restarts from the
  latest complete checkpoint on the remaining nodes; with none, the worker fails the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
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
from oobleck.runtime.control.checkpoint import Checkpoint, latest_complete, write_shard
from oobleck.runtime.control.link import WorkerLink
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.sever import sever_tcp_connections
from oobleck.runtime.engine import CommunicationError, Engine, StepMetrics, job_planner, job_profile
from oobleck.runtime.run_log import RunLog, transfer_fields, write_error_file

logger = logging.getLogger(__name__)

BARRIER_TIMEOUT_S = 120.0
"""Longest a generation's store barrier waits for a member that the master still believes alive."""
QUIET_ERROR_WAIT_S = 5.0
"""After a communication error with no notice, wait this long before asking the master to regroup."""


class ElasticLoop:
    """One worker's training loop across membership generations."""

    def __init__(
        self, job: JobConfig, run_dir: Path, *, node: int, local_rank: int, timeout_s: float
    ) -> None:
        """Connect to the agent link and the store; build the engine (no layers yet).

        Args:
            job: The validated job.
            run_dir: Where metrics, ledger and checkpoints go.
            node: This worker's stable node id.
            local_rank: Its index on the node.
            timeout_s: Collective timeout of the engine (a backstop; notices normally come first).
        """
        self.job, self.run_dir, self.node, self.local_rank = job, run_dir, node, local_rank
        self.engine = Engine(job, node=node, local_rank=local_rank, timeout=timedelta(seconds=timeout_s))
        self._timeout = timedelta(seconds=timeout_s)
        self.store = self._connect_store()
        self.link = WorkerLink.from_env(on_failure=self._on_failure)
        self.log = RunLog(run_dir, node=node, ledger=job.data.ledger)
        self.ckpt_dir = Path(job.checkpoint.dir) if job.checkpoint.dir else run_dir / "checkpoints"
        self.committed: Plan | None = None
        self.plan: Plan | None = None
        self.generation = -1
        self.next_step = 0
        self._planner: Planner | None = None
        self._last: dict[str, Any] | None = None

    # ------------------------------------------------------------------ main loop
    def _on_failure(self, membership: Membership) -> None:
        logger.warning(
            "[node %d] notice: generation %d, %s; aborting process groups",
            self.node,
            membership.generation,
            membership.reason,
        )
        self._abort(f"generation {membership.generation}: {membership.reason}")

    def _abort(self, reason: str) -> None:
        """Destroy this generation's groups and cut their sockets.

        Called on a failure notice, at a step boundary before a join, and after any communication
        error: a peer blocked on *this* rank (e.g. further along a gloo ring from the rank that
        failed first) then fails at once too, so the cascade reaches every rank in milliseconds
        instead of after the collective timeout.
        """
        self.engine.abort(reason)
        # NOTE: the store connection is cut too: a rank blocked in a rendezvous read (waiting for a
        # peer that died) wakes up at once; every generation then starts on a fresh store client.
        sever_tcp_connections(())

    def _connect_store(self) -> dist.Store:
        return dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=self._timeout
        )

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
            try:
                metrics = self.engine.train_step(self.next_step)
            except Exception as exc:
                if not self._aborted(exc):
                    raise
                logger.warning("[node %d step=%d] %s", self.node, self.next_step, exc)
                self._abort(str(exc))
                self._await_change(self.generation)
                continue
            self._record_step(metrics)
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

    def _aborted(self, exc: Exception) -> bool:
        """Whether ``exc`` is the fallout of a failure: a communication error, or anything an abort
        from the link thread caused mid-call (its groups vanished under the training thread).
        A planning or config error is never one: retrying cannot fix it."""
        if isinstance(exc, OobleckError):
            return False
        return isinstance(exc, CommunicationError) or self.engine.comm.error is not None

    def _await_change(self, generation: int) -> None:
        """Wait for a generation newer than ``generation``; ask the master for one if none comes."""
        if self.link.wait_newer(generation, QUIET_ERROR_WAIT_S) is not None:
            return
        logger.warning("[node %d] communication error without a notice; asking for a regroup", self.node)
        self.link.request_regroup(generation)
        if self.link.wait_newer(generation, BARRIER_TIMEOUT_S) is None:
            raise RuntimeError(f"no new generation after a communication error at generation {generation}")

    # ------------------------------------------------------------------ generations
    def _barrier(self, target: Membership) -> list[dict[str, Any]] | None:
        prefix = f"ctl/gen{target.generation}/state"
        record = {
            "plan": None if self.committed is None else self.committed.to_dict(),
            "step": self.next_step,
            "last": self._last,
        }
        self.store.set(f"{prefix}/{self.node}/{self.local_rank}", json.dumps(record))
        keys = [f"{prefix}/{n}/{r}" for n in target.members for r in range(target.slots)]
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while not self.store.check(keys):
            if self._superseded(target):
                return None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"generation {target.generation}: members {target.members} never all arrived"
                )
            time.sleep(0.01)
        return [json.loads(self.store.get(k)) for k in keys]

    def _superseded(self, target: Membership) -> bool:
        latest = self.link.latest
        return latest is not None and latest.generation > target.generation

    def _regroup(self, target: Membership) -> bool:
        """Move to generation ``target``; False when it failed or was superseded (try the newest)."""
        noticed = self.link.received_at.get(target.generation, time.time())
        try:
            # NOTE: the store is inside the try: a notice arriving meanwhile cuts its connection.
            self.store = self._connect_store()
            adopted = self._adopt(target)
        except Exception as exc:
            if not self._aborted(exc):
                raise
            logger.warning("[node %d] regroup at generation %d failed: %s", self.node, target.generation, exc)
            self._abort(str(exc))
            self._await_change(target.generation)
            return False
        if adopted is None:
            return False
        plan_ready, timing = adopted
        self.generation = target.generation
        if target.generation > 0:
            self.log.recovery_started(target, noticed=noticed, plan_ready=plan_ready, timing=timing)
        logger.info(
            "[node %d] generation %d running: %d pipelines, step %d",
            self.node,
            target.generation,
            len(self.plan.pipelines) if self.plan else 0,
            self.next_step,
        )
        return True

    def _adopt(self, target: Membership) -> tuple[float, dict[str, Any]] | None:
        """Agree with the members on the committed plan and step, then (re)configure the engine.

        Returns:
            When the plan was ready and the engine's measured phases; None if superseded.

        Raises:
            ReconfigurationError: the survivors are more than one step apart (a bug, not a failure).
        """
        states = self._barrier(target)
        if states is None:
            return None
        rank_of_node = target.rank_of_node()
        planner = self._get_planner(target)
        if self._superseded(target):
            return None
        survivors = [s for s in states if s["plan"] is not None]
        if not survivors:
            checkpoint = latest_complete(self.ckpt_dir, self.engine.adapter.num_layers)
            # NOTE: a re-run that resumes may have fewer nodes than the first run had.
            make_plan = planner.plan if checkpoint is None else planner.restart_plan
            self.plan = make_plan(target.members)
            plan_ready = time.time()
            self.engine.configure(self.plan, target.generation, rank_of_node, self.store)
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
        if self.committed is not None and self.next_step < ahead["step"]:
            self._roll_forward(ahead["last"])
        self.next_step = ahead["step"]
        return self._reconfigure(planner, committed, target, rank_of_node)

    def _reconfigure(
        self, planner: Planner, committed: Plan, target: Membership, rank_of_node: dict[int, int]
    ) -> tuple[float, dict[str, Any]]:
        lost = tuple(n for n in committed.nodes if n not in target.members)
        joined = tuple(n for n in target.members if n not in committed.nodes)
        try:
            change = planner.reconfigure(committed, lost_nodes=lost, joined_nodes=joined)
        except ReconfigurationError as exc:
            return self._restart_from_checkpoint(planner, target, rank_of_node, exc)
        self.plan = change.plan
        plan_ready = time.time()
        measured = self.engine.reconfigure(
            change.plan, change.transfers, target.generation, rank_of_node, self.store, source_plan=committed
        )
        return plan_ready, {
            "restart": False,
            "rebuild_groups_s": measured.rebuild_groups_s,
            "transfer_state_s": measured.transfer_state_s,
            **transfer_fields(change.plan, change.transfers, measured.copies),
        }

    def _restart_from_checkpoint(
        self, planner: Planner, target: Membership, rank_of_node: dict[int, int], cause: Exception
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
        self.engine.configure(self.plan, target.generation, rank_of_node, self.store)
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

    def _get_planner(self, target: Membership) -> Planner:
        """The job's planner, built from inputs the first worker publishes (a measured profile
        differs between processes, and every worker must plan alike)."""
        if self._planner is not None:
            return self._planner
        if self.store.add("ctl/planner/claim", 1) == 1:
            profile = job_profile(self.job, self.engine.adapter)
            self.store.set(
                "ctl/planner/inputs",
                json.dumps({"profile": profile.to_dict(), "max_nodes": len(target.members)}),
            )
        inputs = json.loads(self.store.get("ctl/planner/inputs"))
        self._planner = job_planner(self.job, ModelProfile.from_dict(inputs["profile"]), inputs["max_nodes"])
        return self._planner

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
        info, ids = self.engine.info, ()
        if info is not None and info.is_first:
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
        every = self.job.checkpoint.every_steps
        info = self.engine.info
        if every <= 0 or self.next_step % every or info is None or info.pipeline != 0:
            return
        write_shard(
            self.ckpt_dir,
            self.next_step,
            node=self.node,
            local_rank=self.local_rank,
            layers=list(info.layers),
            tensors=self.engine.state_tensors(),
        )


def main(args: argparse.Namespace) -> int:
    """Run the elastic loop for the worker the agent started.

    Args:
        args: The worker's parsed flags (``config``, ``run_dir``, ``timeout_s``).

    Returns:
        0 when the job's last step completed here; 1 on any error (written to the error file).
    """
    try:
        job = load_job_config(args.config)
        run_dir = Path(args.run_dir)
        node, local_rank = int(os.environ[NODE_ENV]), int(os.environ.get("LOCAL_RANK", "0"))
        ElasticLoop(
            job, run_dir, node=node, local_rank=local_rank, timeout_s=float(getattr(args, "timeout_s", 60.0))
        ).run()
    except Exception as exc:
        logger.exception("worker failed")
        write_error_file(exc)
        return 1
    return 0
