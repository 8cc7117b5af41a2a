"""Who finishes a step from a survivor's result (:func:`oobleck.runtime.elastic.finishes_step`)."""

from __future__ import annotations

from oobleck.runtime.elastic import finishes_step

AHEAD = {"step": 2, "plan": {"generation": 1}, "last": {"step": 1, "lr": 1e-3, "grad_norm": 0.5}}
"""The furthest survivor's record: it completed step 1 (the joiner's first) and would run step 2."""


def test_a_joiner_whose_first_steps_final_all_reduce_failed_finishes_that_step() -> None:
    """The CI divergence: a node joined in generation 1, received its layers, and its first step's
    final all-reduce failed after another rank had completed it. It completed no step, yet it holds
    that step's synchronised gradients: skipping the update left its layers a step stale."""
    assert finishes_step(next_step=1, configured=True, ahead=AHEAD)


def test_a_rank_level_with_the_furthest_survivor_finishes_nothing() -> None:
    assert not finishes_step(next_step=2, configured=True, ahead=AHEAD)


def test_a_worker_never_configured_holds_no_step_to_finish() -> None:
    """A fresh process (a node joining now) only adopts the step; it has no gradients to apply."""
    assert not finishes_step(next_step=0, configured=False, ahead=AHEAD)
