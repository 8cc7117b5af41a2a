"""Following a growing metrics.jsonl: complete object rows only, each handed out once."""

from __future__ import annotations

from pathlib import Path

from oobleck.runtime.control.jsonl_follow import JsonlFollower


def test_rows_are_handed_out_once_and_a_half_written_line_waits(tmp_path: Path) -> None:
    """A row cut mid-line is returned once its newline arrives; earlier rows never come back."""
    path = tmp_path / "metrics.jsonl"
    follower = JsonlFollower(path)
    assert follower.new_rows() == []  # NOTE: the file does not exist yet.
    path.write_bytes(b'{"step": 0}\n{"st')
    assert follower.new_rows() == [{"step": 0}]
    with path.open("ab") as file:
        file.write(b'ep": 1}\n')
    assert follower.new_rows() == [{"step": 1}]
    assert follower.new_rows() == []


def test_lines_that_are_not_json_objects_are_skipped(tmp_path: Path) -> None:
    """Garbage and non-object JSON lines are skipped, not raised."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'not json\n[1, 2]\n{"loss": 2.5}\n')
    assert JsonlFollower(path).new_rows() == [{"loss": 2.5}]


def test_from_end_skips_what_the_file_already_holds(tmp_path: Path) -> None:
    """A follower made from the end sees only rows appended after it was made."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n')
    follower = JsonlFollower(path, from_end=True)
    with path.open("ab") as file:
        file.write(b'{"step": 1}\n')
    assert follower.new_rows() == [{"step": 1}]
