"""Tests of the recovery benchmark's figures: kill -> next step, throughput, batch and loss checks."""

from __future__ import annotations

import pytest

from benchmarks.recovery_figures import Step, figures, median_figures, oobleck_steps, torchft_steps


def _steps(kill_step: int, *, after_samples: int = 16, recovered_from: int | None = None) -> list[Step]:
    """Steps every 0.1 s, a 0.5 s gap after ``kill_step``; samples shrink to ``after_samples`` after it."""
    rows, t = [], 0.0
    for step in range(12):
        t += 0.5 if step == kill_step + 1 else 0.1
        after = step > kill_step
        rows.append(Step(step, t, after_samples if after else 16, 1.0 + step, after, 3 if after else 4))
    return rows


def test_kill_to_next_step_overhead_and_throughput_on_both_sides() -> None:
    """The recovery is timed from the kill to the first recovered step; samples/s skips that step."""
    steps = _steps(5)
    kill = steps[5].t + 0.05
    got = figures(
        steps,
        t_kill=kill,
        global_batch=16,
        reference={s.step: s.loss for s in steps},
        trained=[1, 2],
        reference_trained=[2, 1],
        window=3,
    )
    assert got.kill_to_next_s == pytest.approx(steps[6].t - kill)
    assert got.steady_step_s == pytest.approx(0.1)
    assert got.overhead_s == pytest.approx(got.kill_to_next_s - 0.1)
    assert got.before_samples_per_s == pytest.approx(160.0)
    assert got.after_samples_per_s == pytest.approx(160.0)
    assert (got.batch_kept, got.loss_equal, got.samples_lost, got.nodes_after) == (True, True, 0, 3)


def test_a_shrunk_batch_lost_samples_and_a_different_loss_are_reported() -> None:
    """Fewer samples per step, a sample never trained, or any loss off by > 1e-6 turn the flags off."""
    steps = _steps(5, after_samples=12)
    reference = {s.step: s.loss for s in steps} | {8: 9.0 * (1 + 1e-5)}
    got = figures(
        steps,
        t_kill=steps[5].t + 0.01,
        global_batch=16,
        reference=reference,
        trained=[1, 1, 3],
        reference_trained=[1, 2, 3],
    )
    assert (got.batch_kept, got.samples_lost, got.loss_equal) == (False, 1, False)
    assert got.loss_max_rel_diff == pytest.approx(1e-5 / (1 + 1e-5))
    assert got.after_samples_per_s == pytest.approx(120.0)
    with pytest.raises(ValueError, match="need >= 2 steps before"):
        figures(
            steps[:6],
            t_kill=steps[5].t,
            global_batch=16,
            reference=reference,
            trained=None,
            reference_trained=None,
        )


def test_medians_take_numbers_at_the_median_and_flags_only_if_always_true() -> None:
    """Three runs: each number is the middle one, a flag holds only if it held in every run."""
    steps = _steps(5)
    runs = [
        figures(
            steps, t_kill=steps[5].t + d, global_batch=16, reference={}, trained=None, reference_trained=None
        )
        for d in (0.01, 0.03, 0.02)
    ]
    merged = median_figures(runs)
    assert merged["kill_to_next_s"] == pytest.approx(runs[2].kill_to_next_s)
    assert merged["samples_lost"] is None
    assert merged["loss_equal"] is False
    with pytest.raises(ValueError, match="at least one run"):
        median_figures([])


def test_torchft_rows_merge_per_step_and_recover_with_a_quorum_newer_than_the_victims() -> None:
    """A step trains participants x slice samples, its loss is the mean; recovery starts at a new quorum."""

    def row(step: int, quorum: int, t: float, loss: float | None, ids: list[int]) -> dict:
        return {"step": step, "quorum": quorum, "t": t, "loss": loss, "ids": ids, "participants": 3 - quorum}

    rows = {
        "g0s0": [row(0, 1, 1.0, None, [0, 1]), row(1, 1, 2.0, None, [4, 5]), row(2, 2, 3.5, None, [8, 9])],
        "g0s1": [row(0, 1, 1.1, 2.0, [0, 1]), row(1, 1, 2.1, 3.0, [4, 5]), row(2, 2, 3.6, 5.0, [8, 9])],
        "g1s0": [row(0, 1, 1.0, None, [2, 3]), row(1, 1, 2.0, None, [6, 7])],
        "g1s1": [row(0, 1, 1.2, 4.0, [2, 3])],  # killed after committing step 1, before its row
    }
    merged = torchft_steps(rows, victim="g1s1")
    assert [(s.step, s.samples, s.loss, s.recovered, s.nodes) for s in merged] == [
        (0, 4, 3.0, False, 4),
        (1, 4, 3.0, False, 3),
        (2, 2, 5.0, True, 2),
    ]
    assert merged[2].t == 3.6
    assert not any(s.recovered for s in torchft_steps(rows, victim=None))


def test_oobleck_rows_take_the_last_row_of_a_step_with_its_samples_and_generation_members() -> None:
    """A redone step appears once, with the samples its last row trained and its generation's members."""
    records = [
        {"event": "membership", "generation": 0, "members": [0, 1]},
        {"step": 0, "loss": 2.0, "t": 1.0, "generation": 0, "samples": 2},
        {"step": 1, "loss": 9.0, "t": 1.5, "generation": 0, "samples": 1},
        {"step": 1, "loss": 1.5, "t": 2.0, "generation": 1, "samples": 2},
    ]
    steps = oobleck_steps(records, {0: 2, 1: 1})
    assert [(s.step, s.samples, s.loss, s.recovered, s.nodes) for s in steps] == [
        (0, 2, 2.0, False, 2),
        (1, 2, 1.5, True, 1),
    ]
