"""Where a recovery's milliseconds go on one worker: named wall-clock marks, reduced to phases.

The elastic loop marks each boundary of a regroup as it passes it (the notice arriving, the
training thread unblocking, the store client ready, the default group up, the state barrier done,
the plan ready, the subgroups up, the layer state moved); :func:`phases_ms` turns the marks into
the duration of each phase, which the recovery record carries as ``regroup_ms`` so that the
benchmark (and a user) can see which phase a slow recovery spent its time in.

Assumptions:
- Marks are ``time.time()`` of one process (one clock); a phase whose end mark is missing (that
  path did not run: a regroup without a failed step has no ``unblocked`` mark) is left out.
"""

from __future__ import annotations

import time

PHASES: tuple[tuple[str, str, str], ...] = (
    # (phase, start mark, end mark), in the order a recovery passes them
    ("unblock", "notice", "unblocked"),
    ("await", "unblocked", "regroup"),
    ("notice_to_regroup", "notice", "regroup"),
    ("store", "regroup", "store"),
    ("init_group", "store", "init_group"),
    ("barrier", "init_group", "barrier"),
    ("plan", "barrier", "plan"),
    ("subgroups", "plan", "groups"),
    ("transfer", "groups", "transfer"),
)
"""Every phase :func:`phases_ms` reports. ``notice_to_regroup`` spans ``unblock`` + ``await``
(it is the only one of the three when the regroup did not interrupt a step). ``init_group`` is
publishing this worker's state record and joining the generation's world, which waits for the last
member; the state ``barrier`` after it then only reads the records, all already set. ``subgroups``
ends when the generation's groups and the empty layers its copies land in are built and, when layer
state moves, every rank has built them (a barrier, so that every ``transfer`` clock starts
together)."""


class RegroupClock:
    """Marks of the regroup in progress; reset when a new notice arrives."""

    def __init__(self) -> None:
        """No marks yet."""
        self.marks: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        """Record that the regroup passed ``name`` now (or at ``at``, a ``time.time()`` value)."""
        self.marks[name] = time.time() if at is None else at

    def reset(self, notice: float) -> None:
        """Start the marks of a new regroup at ``notice`` (when its notice arrived)."""
        self.marks = {"notice": notice}


def phases_ms(marks: dict[str, float]) -> dict[str, float]:
    """The duration of every phase whose two marks are present, in milliseconds.

    Args:
        marks: Mark name -> ``time.time()``, as :class:`RegroupClock` collected them.

    Returns:
        Phase name -> milliseconds (rounded to 0.01 ms), in :data:`PHASES` order; a phase ending
        before it starts (marks of an earlier attempt) is reported as 0.
    """
    out: dict[str, float] = {}
    for phase, start, end in PHASES:
        if start in marks and end in marks:
            out[phase] = round(max(0.0, marks[end] - marks[start]) * 1e3, 2)
    return out


def mark_engine_phases(clock: RegroupClock, *, transfer_s: float) -> None:
    """Mark the engine's phases of a reconfigure that just returned (now).

    Args:
        clock: The regroup's marks.
        transfer_s: How long the state transfer, the reconfigure's last phase, took.
    """
    done = time.time()
    clock.mark("groups", done - transfer_s)
    clock.mark("transfer", done)
