"""Short text forms the demo's parts print: node id lists, pipeline sizes, paths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from oobleck.planning.plan import Plan


def sizes(plan: Plan) -> str:
    """Nodes per pipeline joined by ``+``, e.g. ``9+11+12``."""
    return "+".join(str(len(pipeline.nodes)) for pipeline in plan.pipelines)


def ids(node_ids: Sequence[int]) -> str:
    """Node ids joined by commas, e.g. ``0,1,2``."""
    return ",".join(str(node) for node in node_ids)


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies under it (shorter to read and copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
