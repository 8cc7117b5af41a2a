"""The recovery benchmark's figures, computed from step rows: pure functions, no processes.

One run of a peer is reduced to :class:`Step` rows (one per committed optimizer step: when it
committed, how many samples it trained, its loss, and whether the failed node's replacement
membership was in force) plus the wall-clock time of the SIGKILL. The figures are the ones the
issue asks for: kill -> next committed step, the recovery overhead (that minus one steady step),
samples/s before and after, whether the global batch and the loss curve are those of a fault-free
run, and how many surviving nodes still train.

Assumptions:
    * Rows of one run share one clock (``time.time()`` on this machine).
    * "After the kill" means a step committed by the new membership (oobleck: a later generation;
      torchft: a quorum without the lost group): a step that was already past its last collective
      when the kill landed is not a recovery.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["Figures", "Step", "asdict", "figures", "median_figures"]
import itertools
from typing import Any


@dataclass(frozen=True, slots=True)
class Step:
    """One committed optimizer step of a run."""

    step: int
    t: float
    """Wall-clock time the step committed, seconds."""
    samples: int
    """Samples this step trained, over all nodes."""
    loss: float | None
    """Mean training loss of the step (None when no process reported one)."""
    recovered: bool
    """True once the membership without the killed node is in force."""
    nodes: int
    """Nodes that took part in the step."""


@dataclass(frozen=True, slots=True)
class Figures:
    """What one run of one peer shows."""

    kill_to_next_s: float
    steady_step_s: float
    overhead_s: float
    """``kill_to_next_s - steady_step_s``: what the failure cost beyond the step it interrupted."""
    before_samples_per_s: float
    after_samples_per_s: float
    batch_kept: bool
    """Every committed step trained the full global batch and no sample of the fault-free run was lost."""
    samples_lost: int | None
    """Samples of the fault-free run never trained (None: the peer records no sample ids)."""
    loss_equal: bool
    """Every step's loss equals the fault-free run's (relative 1e-6)."""
    loss_max_rel_diff: float
    nodes_after: int
    """Nodes that trained the first steady step after the recovery."""


def median_figures(runs: Sequence[Figures]) -> dict[str, Any]:
    """Per-field median over repeats (numbers) or all-of (flags), as a plain dict.

    Args:
        runs: Figures of repeated runs of one peer.

    Returns:
        Field name -> median value (``bool`` fields: True only if true in every run).

    Raises:
        ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("median_figures needs at least one run")
    rows = [asdict(run) for run in runs]
    merged: dict[str, Any] = {}
    for key, value in rows[0].items():
        values = [row[key] for row in rows]
        if isinstance(value, bool):
            merged[key] = all(values)
        else:
            merged[key] = None if None in values else statistics.median(values)
    return merged


def figures(
    steps: Sequence[Step],
    *,
    t_kill: float,
    global_batch: int,
    reference: Mapping[int, float],
    trained: Iterable[int] | None,
    reference_trained: Iterable[int] | None,
    window: int = 8,
) -> Figures:
    """Reduce one run to its figures.

    Args:
        steps: The run's committed steps, in commit order.
        t_kill: Wall-clock time of the SIGKILL.
        global_batch: The job's samples per step.
        reference: Loss per step of a fault-free run of the same peer.
        trained: Every sample id the run trained (with repeats); None if the peer records none.
        reference_trained: Every sample id the fault-free run trained (None: as ``trained``).
        window: Steady steps on each side of the failure that samples/s is taken over.

    Returns:
        The figures.

    Raises:
        ValueError: No step before the kill, or none committed by the recovered membership.
    """
    before = [s for s in steps if s.t <= t_kill][-(window + 1) :]
    after = [s for s in steps if s.recovered and s.t > t_kill]
    if len(before) < 2 or len(after) < 3:
        raise ValueError(f"need >= 2 steps before and 3 after the kill, got {len(before)} and {len(after)}")
    steady_step_s = statistics.median(b.t - a.t for a, b in itertools.pairwise(before))
    kill_to_next_s = after[0].t - t_kill
    # NOTE: the first recovered step pays the recovery; throughput is measured from it onward.
    steady_after = after[: window + 1]
    diffs = [
        abs(s.loss - reference[s.step]) / abs(reference[s.step])
        for s in steps
        if s.loss is not None and s.step in reference
    ]
    lost = (
        None if trained is None or reference_trained is None else _multiset_minus(reference_trained, trained)
    )
    return Figures(
        kill_to_next_s=kill_to_next_s,
        steady_step_s=steady_step_s,
        overhead_s=kill_to_next_s - steady_step_s,
        before_samples_per_s=_rate(before),
        after_samples_per_s=_rate(steady_after),
        batch_kept=all(s.samples == global_batch for s in steps) and not lost,
        samples_lost=lost,
        loss_equal=bool(reference) and len(diffs) == len(reference) and max(diffs, default=0.0) <= 1e-6,
        loss_max_rel_diff=max(diffs, default=0.0),
        nodes_after=after[1].nodes,
    )


def _rate(steps: Sequence[Step]) -> float:
    """Samples per second over consecutive steps: what the later ones trained over their span."""
    return sum(s.samples for s in steps[1:]) / (steps[-1].t - steps[0].t)


def _multiset_minus(want: Iterable[int], got: Iterable[int]) -> int:
    counts: dict[int, int] = {}
    for sample in want:
        counts[sample] = counts.get(sample, 0) + 1
    for sample in got:
        if counts.get(sample, 0) > 0:
            counts[sample] -= 1
    return sum(counts.values())


def torchft_steps(rows: Mapping[str, Sequence[Mapping[str, Any]]], *, victim: str | None) -> list[Step]:
    """Merge torchft's per-process rows into one row per committed step.

    Args:
        rows: ``"g<group>s<stage>"`` -> that process's rows (``step``, ``t``, ``ids``, ``loss``,
            ``quorum``).
        victim: The killed process's name (None: a fault-free run).

    Returns:
        Steps in step order; a step is recovered when its quorum is newer than the last quorum the
        killed process committed a step in (quorum ids grow with every new quorum).
    """
    victim_rows = rows.get(victim, ()) if victim is not None else ()
    last_quorum = max((int(r["quorum"]) for r in victim_rows), default=-1) if victim is not None else None
    per_step: dict[int, list[tuple[str, Mapping[str, Any]]]] = {}
    for name, process_rows in rows.items():
        for row in process_rows:
            per_step.setdefault(int(row["step"]), []).append((name, row))
    merged = []
    for step in sorted(per_step):
        entries = per_step[step]
        losses = [float(row["loss"]) for _, row in entries if row.get("loss") is not None]
        quorum = min(int(row["quorum"]) for _, row in entries)
        merged.append(
            Step(
                step=step,
                t=max(float(row["t"]) for _, row in entries),
                # NOTE: a committed step trained every participating group's slice, recorded or not.
                samples=int(entries[0][1]["participants"]) * len(entries[0][1]["ids"]),
                loss=statistics.fmean(losses) if losses else None,
                recovered=last_quorum is not None and quorum > last_quorum,
                nodes=len(entries),
            )
        )
    return merged


def torchft_trained(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[int]:
    """Every sample id recorded by a committed step (first-stage processes hold the data).

    A killed process may commit a step and die before writing its row: that slice (one group's
    share of one step) then counts as lost although it was trained.
    """
    return [i for name, process in rows.items() if name.endswith("s0") for row in process for i in row["ids"]]


def oobleck_steps(records: Sequence[Mapping[str, Any]], nodes: Mapping[int, int]) -> list[Step]:
    """Oobleck's step rows as :class:`Step` (the last row of a step wins, as in the harness).

    Args:
        records: ``metrics.jsonl`` rows (``samples`` is what the committed step trained).
        nodes: Members per generation (from the membership records).

    Returns:
        Steps in step order; recovered once the generation is past the first.
    """
    last: dict[int, Mapping[str, Any]] = {}
    for row in records:
        if "loss" in row and "event" not in row:
            last[int(row["step"])] = row
    return [
        Step(
            step=step,
            t=float(row["t"]),
            samples=int(row["samples"]),
            loss=float(row["loss"]),
            recovered=int(row["generation"]) > 0,
            nodes=nodes[int(row["generation"])],
        )
        for step, row in sorted(last.items())
    ]
