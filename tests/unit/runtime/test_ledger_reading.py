"""The sample ledger's reading rule: a step's samples are its newest generation's lines."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.harness import Run


def _write(run_dir: Path, node: int, *entries: tuple[int, int, list[int]]) -> None:
    folder = run_dir / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "generation": g, "pipeline": 0, "sample_ids": ids} for s, g, ids in entries]
    (folder / f"node{node}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_step_redone_by_the_survivors_supersedes_the_dead_nodes_line(tmp_path: Path) -> None:
    """The CI case: node 0 finished its half of step 6 in generation 1, logged it and died; the
    survivors redid the whole step in generation 2. Step 6 trained once, on generation 2's samples;
    a step no later generation redid keeps every line of its generation."""
    _write(tmp_path, 0, (5, 1, [1, 2]), (6, 1, [3, 4]))
    _write(tmp_path, 1, (6, 2, [3, 4, 5, 6]), (7, 2, [7, 8, 9, 10]))
    _write(tmp_path, 2, (5, 1, [11, 12]))
    ledger = Run(0, tmp_path, None).ledger()
    assert ledger == {5: [1, 2, 11, 12], 6: [3, 4, 5, 6], 7: [7, 8, 9, 10]}
