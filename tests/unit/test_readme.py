"""The README's shell blocks copy-paste cleanly: each one runs as written, or says why it is not run here.

Convention: a shell block (```bash, ```sh, ```shell) that needs a cluster, starts a long job, or is the
demo or the whole suite has ``<!-- not-run: REASON -->`` on the line just before its fence; every other
block runs in a temporary folder (``examples/`` linked in, ``HOME`` there) with this interpreter as
``python``, each bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHELLS = frozenset({"bash", "sh", "shell"})
FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*)-->\s*$")
BLOCK_TIMEOUT_S = 120
"""Longest one block may run (they take seconds; the bound stops a hang)."""


@dataclass(frozen=True)
class Block:
    """One fenced shell block of a Markdown file."""

    line: int
    """1-based line of the opening fence."""
    text: str
    skip_reason: str | None
    """The ``not-run`` reason before it (None: the block is run; "" : marked without a reason)."""


def shell_blocks(markdown: str) -> list[Block]:
    """The shell blocks of ``markdown``, each with the ``not-run`` reason on the line before its fence."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        if match.group(1) in SHELLS:
            before = lines[index - 1] if index > 0 else ""
            marker = NOT_RUN.match(before.strip())
            reason = marker.group(1).strip() if marker else None
            blocks.append(Block(index + 1, "\n".join(lines[index + 1 : end]), reason))
        index = end + 1
    return blocks


BLOCKS = shell_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.skip_reason is None]


def test_parser_reads_fences_and_reasons() -> None:
    """Shell blocks are found with their reasons; other languages are ignored; an empty reason is ''."""
    text = "\n".join(
        [
            "<!-- not-run: needs a cluster -->",
            "```bash",
            "srun x",
            "```",
            "```yaml",
            "a: 1",
            "```",
            "<!-- not-run: -->",
            "```sh",
            "y",
            "```",
            "```bash",
            "echo ok",
            "```",
        ]
    )
    assert shell_blocks(text) == [
        Block(2, "srun x", "needs a cluster"),
        Block(9, "y", ""),
        Block(12, "echo ok", None),
    ]


def test_every_skipped_block_says_why() -> None:
    """Each README shell block marked not-run gives a reason of a few words, and most blocks do run."""
    vague = [b.line for b in BLOCKS if b.skip_reason is not None and len(b.skip_reason.split()) < 3]
    assert not vague, f"README.md lines {vague}: `<!-- not-run: REASON -->` needs a reason of a few words"
    assert len(RUNNABLE) >= 4, [b.line for b in BLOCKS]


@pytest.mark.slow
@pytest.mark.timeout(BLOCK_TIMEOUT_S + 30)
@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_readme_shell_block_runs(block: Block, tmp_path: Path) -> None:
    """A README shell block not marked not-run exits 0 when pasted into bash (-e, pipefail)."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "HOME": str(tmp_path), "PATH": path, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    # NOTE: its own session, killed as a group afterwards: nothing a block starts outlives the test.
    shell = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = shell.communicate(timeout=BLOCK_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)
    assert shell.returncode == 0, f"README.md line {block.line} exited {shell.returncode}: {err[-1500:]}"
