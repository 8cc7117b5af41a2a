"""The simulated training job: advances time analytically between cluster events.

Between two events the configuration's throughput is constant, so a training phase is one SimPy
timeout that lasts until the next thing the job itself must do (a checkpoint, taking joined nodes at
a step boundary, or the horizon). A membership change interrupts that timeout; the elapsed time is
credited pro rata and the policy decides what happens next. The number of SimPy events therefore
grows with failures and checkpoints, never with training steps.

Assumptions:
    * Checkpoints and joins happen at step boundaries; a failure can strike at any instant, also
      during a checkpoint (which is then not committed) or a recovery (which then starts over from
      the policy's new answer, the time already spent staying recovery time). An event that needs
      no new recovery lets the interrupted checkpoint or recovery resume where it stopped.
    * A recovery's whole duration trains nothing; what follows trains at the new configuration's
      rate (a policy whose first step after a recovery is slower charges the excess as recovery).
    * A recovery without rollback (a grow, a reroute) carries the step in flight over: its
      completed fraction continues in the new configuration.
    * The run stops at the horizon; the step in flight counts pro rata.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from enum import Enum
from typing import Any

import simpy

from oobleck.sim.base import Configuration, Policy, Recovery
from oobleck.sim.cluster import Cluster, SimTime
from oobleck.sim.failures import ClusterEvent
from oobleck.sim.metrics import JobMetrics, TimelinePoint

_SNAP = 1e-9
"""Relative tolerance under which a step's progress counts as a boundary (float round-off)."""


class Mode(str, Enum):
    """What the job does now.

    Transitions: TRAIN -> CHECKPOINT at a due step boundary, CHECKPOINT -> TRAIN when written;
    TRAIN or CHECKPOINT -> RECOVER on a loss (or a join the policy takes); RECOVER -> RECOVER on
    another loss; RECOVER -> TRAIN when done; any -> DOWN when nothing can run on the nodes up;
    DOWN -> RECOVER when joined nodes make a configuration possible.
    """

    TRAIN = "train"
    CHECKPOINT = "checkpoint"
    CYCLES = "cycles"
    """Several whole train-then-checkpoint cycles as one timeout (see :meth:`TrainingJob._spend_cycles`)."""
    RECOVER = "recover"
    DOWN = "down"


class TrainingJob:
    """One policy's job on a cluster; starts its :meth:`run_training` process on creation."""

    batch_cycles: bool = True
    """Run whole checkpoint cycles as one phase (``False``: one phase per train and write, the
    reference a test compares the batched accounting with)."""

    def __init__(
        self, env: simpy.Environment, cluster: Cluster, policy: Policy, config: Configuration
    ) -> None:
        self.env = env
        self.cluster = cluster
        self.policy = policy
        self.metrics = JobMetrics()
        self.config: Configuration | None = config
        self.pending: Recovery | None = None
        self.pending_joins: list[int] = []
        self.progress_s = 0.0
        """Seconds into the step in flight."""
        self.since_checkpoint_s = 0.0
        """Training seconds since the last committed checkpoint."""
        self.checkpoint_due = False
        self.uncommitted = [0.0, 0.0, 0.0]
        """Samples, useful seconds and redundancy seconds since the last committed checkpoint."""
        self.outage_start_s: SimTime | None = None
        self.carried_step_fraction = 0.0
        """Fraction of the step in flight that a recovery without rollback carries over."""
        self.left_s: dict[Mode, float] = {}
        """Seconds left of a recovery or checkpoint that an unrelated event interrupted."""
        self._cycles = (0.0, 0.0, 0.0, 0)
        """(first training, checkpoint, training per cycle, whole cycles after the first) of CYCLES."""
        self._stop_reason = "horizon"
        self.process = env.process(self.run_training())
        cluster.attach(self.process)

    def run_training(self) -> Generator[simpy.Event, Any, None]:
        """Alternate phases until the horizon; each phase is one interruptible timeout."""
        horizon = self.cluster.horizon_s
        while self.env.now < horizon:
            mode, duration = self._next_phase(horizon - self.env.now)
            if duration <= 0:
                self._finish(mode)
                continue
            self._mark(mode)
            start = self.env.now
            try:
                yield self.env.timeout(duration)
            except simpy.Interrupt as interrupt:
                cause = interrupt.cause
                if not isinstance(cause, ClusterEvent):
                    raise TypeError(f"job interrupted with {cause!r}, not a ClusterEvent") from interrupt
                if mode is Mode.CYCLES:
                    self._spend_cycles(self.env.now - start, interrupted=True)
                    self._handle(cause)
                    continue
                self._spend(mode, self.env.now - start)
                if mode in (Mode.RECOVER, Mode.CHECKPOINT):
                    # NOTE: resumed where it stopped unless _handle starts a new recovery.
                    self.left_s[mode] = duration - (self.env.now - start)
                self._handle(cause)
                continue
            if mode is Mode.CYCLES:
                self._spend_cycles(duration, interrupted=False)
                continue
            self._spend(mode, duration)
            if self.env.now >= horizon:
                break  # NOTE: a phase cut by the horizon never completes (no commit, no resume).
            self._finish(mode)
        self._mark(Mode.DOWN if self.config is None else Mode.TRAIN)

    def _next_phase(self, remaining_s: float) -> tuple[Mode, float]:
        if self.pending is not None:
            left = self.left_s.pop(Mode.RECOVER, self.pending.duration_s)
            return Mode.RECOVER, min(left, remaining_s)
        if self.config is None:
            return Mode.DOWN, remaining_s
        if self.checkpoint_due:
            left = self.left_s.pop(Mode.CHECKPOINT, self.policy.checkpoint_s(self.config))
            return Mode.CHECKPOINT, min(left, remaining_s)
        step = self.config.step_time_s
        to_boundary = (step - self.progress_s) % step
        stops = [(remaining_s, "horizon")]
        interval = self.policy.checkpoint_interval_s(self.config)
        if math.isfinite(interval):
            wait = max(interval - self.since_checkpoint_s, 0.0)
            stops.append((wait + (step - (self.progress_s + wait) % step) % step, "checkpoint"))
        if self.pending_joins and (self.policy.join_at == "step" or not math.isfinite(interval)):
            stops.append((to_boundary, "join"))
        duration, self._stop_reason = min(stops)
        if self._stop_reason == "checkpoint" and not self.pending_joins and self.batch_cycles:
            # NOTE: from a committed checkpoint every cycle is the same: train the period rounded up
            # to a step boundary, then write. Whole cycles run as one timeout, so the number of
            # SimPy events grows with failures, not with checkpoints (tens of thousands a month at
            # 16K nodes).
            checkpoint_s = self.policy.checkpoint_s(self.config)
            cycle_train_s = interval + (step - interval % step) % step
            whole = math.floor((remaining_s - duration - checkpoint_s) / (cycle_train_s + checkpoint_s))
            if whole >= 1:
                self._cycles = (duration, checkpoint_s, cycle_train_s, whole)
                return Mode.CYCLES, duration + checkpoint_s + whole * (cycle_train_s + checkpoint_s)
        return Mode.TRAIN, duration

    def _spend(self, mode: Mode, elapsed: float) -> None:
        """Credit ``elapsed`` seconds of ``mode`` to the breakdown (and samples when training)."""
        breakdown = self.metrics.breakdown_s
        if mode is Mode.TRAIN:
            assert self.config is not None  # NOTE: TRAIN is only chosen with a configuration.
            config = self.config
            redundancy = elapsed * config.redundancy_fraction
            samples = elapsed / config.step_time_s * config.samples_per_step
            breakdown["useful"] += elapsed - redundancy
            breakdown["redundancy"] += redundancy
            self.metrics.samples += samples
            self.uncommitted[0] += samples
            self.uncommitted[1] += elapsed - redundancy
            self.uncommitted[2] += redundancy
            self.since_checkpoint_s += elapsed
            progress = (self.progress_s + elapsed) % config.step_time_s
            near_boundary = min(progress, config.step_time_s - progress) < _SNAP * config.step_time_s
            self.progress_s = 0.0 if near_boundary else progress
        elif mode is Mode.CHECKPOINT:
            breakdown["checkpoint"] += elapsed
        elif mode is Mode.RECOVER:
            breakdown["recovery"] += elapsed
        else:
            breakdown["down"] += elapsed

    def _spend_cycles(self, elapsed_s: float, *, interrupted: bool) -> None:
        """Account ``elapsed_s`` of a CYCLES phase exactly as its train and checkpoint phases would.

        The phase is: train ``first``, write; then ``whole`` times: train ``per cycle``, write.
        Whole cycles are credited in bulk; an interruption inside a training part leaves that part
        uncommitted, inside a write leaves the write to resume (or be abandoned) as usual.
        """
        first_s, checkpoint_s, train_s, whole = self._cycles
        if not self._cycle_part(elapsed_s, first_s, checkpoint_s, interrupted):
            return
        elapsed_s -= first_s + checkpoint_s
        cycle_s = train_s + checkpoint_s
        done = min(whole, math.floor(elapsed_s / cycle_s + _SNAP)) if interrupted else whole
        if done:
            self._spend(Mode.TRAIN, done * train_s)
            self._spend(Mode.CHECKPOINT, done * checkpoint_s)
            self.progress_s = 0.0
            self._finish(Mode.CHECKPOINT)
        if interrupted and done < whole:
            self._cycle_part(max(elapsed_s - done * cycle_s, 0.0), train_s, checkpoint_s, True)

    def _cycle_part(self, elapsed_s: float, train_s: float, checkpoint_s: float, interrupted: bool) -> bool:
        """The first ``elapsed_s`` of one train-then-write cycle; whether it was written (committed)."""
        if interrupted and elapsed_s < train_s:
            self._spend(Mode.TRAIN, elapsed_s)
            return False
        self._spend(Mode.TRAIN, train_s)
        self.progress_s = 0.0
        written_s = elapsed_s - train_s
        if interrupted and written_s < checkpoint_s:
            self.checkpoint_due = True
            self._spend(Mode.CHECKPOINT, written_s)
            self.left_s[Mode.CHECKPOINT] = checkpoint_s - written_s
            return False
        self._spend(Mode.CHECKPOINT, checkpoint_s)
        self._finish(Mode.CHECKPOINT)
        return True

    def _finish(self, mode: Mode) -> None:
        """A phase ran to its end: move on to what it was waiting for."""
        if mode is Mode.TRAIN:
            if self._stop_reason == "horizon":
                return
            self.progress_s = 0.0
            if self._stop_reason == "checkpoint":
                self.checkpoint_due = True
            else:
                self._take_joins()
        elif mode is Mode.CHECKPOINT:
            self.checkpoint_due = False
            self.since_checkpoint_s = 0.0
            self.uncommitted = [0.0, 0.0, 0.0]
            if self.pending_joins:
                self._take_joins()
        elif mode is Mode.RECOVER:
            assert self.pending is not None  # NOTE: RECOVER is only chosen with a pending recovery.
            self.config = self.pending.config
            if self.pending.kind == "restart" and self.policy.checkpoint_after_restart:
                self.checkpoint_due = True
            self.pending = None
            self.progress_s = 0.0
            if self.config is not None:
                self.progress_s = self.carried_step_fraction * self.config.step_time_s
                if self.policy.join_idle:
                    idle = set(self.cluster.alive).difference(self.config.nodes)
                    self.pending_joins.extend(sorted(idle))
            self.carried_step_fraction = 0.0
            if self.outage_start_s is not None:
                self.metrics.recovery_durations_s.append(self.env.now - self.outage_start_s)
                self.outage_start_s = None

    def _handle(self, event: ClusterEvent) -> None:
        """React to a membership change that interrupted the current phase."""
        self.metrics.failures += len(event.lost)
        self.pending_joins.extend(event.joined)
        alive = self.cluster.alive
        target = self.pending.config if self.pending is not None else self.config
        lost = self.policy.affected(target, event.lost) if target is not None else ()
        if target is not None and lost:
            recovery = self.policy.on_loss(target, lost, alive)
            if recovery is not None:
                self._begin(recovery)
                return
        if target is None and event.joined:
            self.pending_joins.clear()
            recovery = self.policy.restart(alive, rollback="none")
            if recovery.config is not None:
                self._begin(recovery)

    def _take_joins(self) -> None:
        assert self.config is not None  # NOTE: joins are taken only while a configuration runs.
        # NOTE: a restart since the join may already have taken the node, or it may have failed again.
        cluster, config = self.cluster, self.config
        joined = tuple(
            sorted({node for node in self.pending_joins if cluster.is_up(node) and not config.uses(node)})
        )
        self.pending_joins.clear()
        if joined:
            recovery = self.policy.on_join(self.config, joined, self.cluster.alive)
            if recovery is not None:
                self._begin(recovery)

    def _begin(self, recovery: Recovery) -> None:
        """Start ``recovery``: take back the work it loses and make it the pending phase.

        A recovery or checkpoint it interrupts is abandoned (the time spent stays spent).
        """
        self.left_s.clear()
        # NOTE: while recovering, the step in flight is the one a previous recovery carried over.
        in_flight = self.progress_s
        if self.config is not None:
            in_flight += self.carried_step_fraction * self.config.step_time_s
        self.carried_step_fraction = 0.0
        if recovery.rollback == "iteration":
            self._lose(in_flight)
        elif recovery.rollback == "checkpoint":
            samples, useful, redundancy = self.uncommitted
            self.metrics.samples -= samples
            self.metrics.breakdown_s["useful"] -= useful
            self.metrics.breakdown_s["redundancy"] -= redundancy
            self.metrics.breakdown_s["lost"] += useful + redundancy
            self.uncommitted = [0.0, 0.0, 0.0]
            self.since_checkpoint_s = 0.0
            self.checkpoint_due = False
        elif self.config is not None:
            self.carried_step_fraction = in_flight / self.config.step_time_s
        self.progress_s = 0.0
        self.metrics.recoveries[recovery.kind] = self.metrics.recoveries.get(recovery.kind, 0) + 1
        if self.outage_start_s is None:
            self.outage_start_s = self.env.now
        if recovery.config is None:
            self.pending = None
            self.config = None
        else:
            self.pending = recovery

    def _lose(self, seconds: float) -> None:
        """Take back the step in flight: ``seconds`` of training become lost work."""
        if seconds <= 0 or self.config is None:
            return
        config = self.config
        redundancy = seconds * config.redundancy_fraction
        samples = seconds / config.step_time_s * config.samples_per_step
        self.metrics.samples -= samples
        self.metrics.breakdown_s["useful"] -= seconds - redundancy
        self.metrics.breakdown_s["redundancy"] -= redundancy
        self.metrics.breakdown_s["lost"] += seconds
        self.uncommitted[0] -= samples
        self.uncommitted[1] -= seconds - redundancy
        self.uncommitted[2] -= redundancy
        self.since_checkpoint_s -= seconds

    def _rate(self, mode: Mode) -> float:
        """Throughput the timeline shows: a CYCLES phase shows its mean over train and write."""
        assert self.config is not None  # NOTE: only asked while a configuration runs.
        if mode is Mode.CYCLES:
            first_s, checkpoint_s, train_s, whole = self._cycles
            trained_s = first_s + whole * train_s
            return self.config.samples_per_s * trained_s / (trained_s + (whole + 1) * checkpoint_s)
        return self.config.samples_per_s

    def _mark(self, mode: Mode) -> None:
        config = self.config if self.pending is None else self.pending.config
        running = mode in (Mode.TRAIN, Mode.CYCLES) and self.config is not None
        self.metrics.mark(
            TimelinePoint(
                time_s=self.env.now,
                nodes_up=len(self.cluster.alive),
                nodes_used=len(config.nodes) if config is not None else 0,
                samples_per_s=self._rate(mode) if running else 0.0,
                min_pipeline_nodes=config.min_pipeline_nodes if config is not None else 0,
                samples=self.metrics.samples,
            )
        )
