"""The live demo's layer copies: what moved between surviving nodes, and the pipelines it built.

Read straight from ``metrics.jsonl``: the first recovery row (its job-wide ``transfers`` and the
new ``pipelines``) and the ``transfer`` rows of that generation (bytes and milliseconds measured
by each receiving worker, see :mod:`oobleck.runtime.run_log`).

Assumptions:
    * The run recorded at least one recovery; a recovery without copies (every survivor already
      held its layers) prints a line saying so instead of an empty table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from oobleck.demo.text import ids
from oobleck.viz.runs import METRICS_FILE


def first_recovery_rows(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first recovery row of a run and the ``transfer`` rows of its generation.

    Args:
        run_dir: a run directory the runtime wrote.

    Returns:
        ``(recovery, transfers)``; the transfers sorted by (layer, destination node).

    Raises:
        StopIteration: the run has no recovery row.
    """
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    recovery = next(row for row in rows if row.get("event") == "recovery")
    copies = [
        row for row in rows if row.get("event") == "transfer" and row["generation"] == recovery["generation"]
    ]
    return recovery, sorted(copies, key=lambda row: (row["layer"], row["dst"]))


def kilobytes(size_bytes: int) -> str:
    """``1399296`` -> ``1399.3 KB`` (decimal kilobytes, as the byte counts are exact)."""
    return f"{size_bytes / 1e3:.1f} KB"


def print_copies(out: Console, recovery: dict[str, Any], copies: list[dict[str, Any]]) -> None:
    """Print each copied layer (source, destination, bytes, ms) and the new pipelines' stages.

    Args:
        out: where the tables go.
        recovery: the recovery row (``transfers``, ``transfer_bytes``, ``pipelines``).
        copies: the ``transfer`` rows of that recovery's generation.
    """
    planned = recovery.get("transfers", [])
    if not planned:
        out.print("No layer copied: every survivor already held the layers of its new stage.")
    else:
        table = Table(
            title=(
                f"Layers copied between survivors: {len(planned)} layers, "
                f"{kilobytes(int(recovery['transfer_bytes']))} (parameters + AdamW moments)"
            ),
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )
        for name in ("layer", "from node", "to node", "bytes", "KB", "ms"):
            table.add_column(name, justify="right")
        measured = {(row["layer"], row["dst"]): row for row in copies}
        for copy in planned:
            row = measured.get((copy["layer"], copy["dst"]))
            table.add_row(
                str(copy["layer"]),
                str(copy["src"]),
                str(copy["dst"]),
                str(row["bytes"] if row else copy["bytes"]),
                kilobytes(int(row["bytes"] if row else copy["bytes"])),
                f"{row['ms']:.1f}" if row else "not recorded",
            )
        out.print(table)
    out.print("Pipelines after the recovery (template: node -> layers):")
    for pipeline in recovery.get("pipelines", []):
        stages = " | ".join(f"node {s['node']}: layers {_span(s['layers'])}" for s in pipeline["stages"])
        out.print(
            f"  nodes {ids(pipeline['nodes'])}, {pipeline['microbatches']} microbatches: {stages}",
            soft_wrap=True,
        )


def _span(layers: list[int]) -> str:
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
