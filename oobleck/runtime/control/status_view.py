"""The status of a job as plain, validated data, and the one function that renders it as text.

``oobleck status RUN_DIR`` builds a :class:`StatusView` from the run dir's files; ``oobleck status
--master HOST:PORT`` receives one from the running master over the control channel. Both print it
with :func:`render`, so the two views cannot drift apart.

Assumptions:
- A view read from the network (or from a file another process is rewriting) is untrusted: each
  field is type-checked by :meth:`StatusView.from_message`, which raises :class:`StatusError`
  naming the first bad field; nothing is evaluated, and the frame cap (1 MiB) bounds its size.
- Torch-free (a login node runs it next to a live job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oobleck.errors import OobleckError
from oobleck.runtime.control.progress import Progress, progress_line, recovery_line

RECOVERIES_SHOWN = 3
"""How many of the last recoveries a view carries."""


class StatusError(OobleckError):
    """A status request or reply failed validation, or the master could not be asked."""


def _get(data: Any, key: str, path: str) -> Any:
    if not isinstance(data, dict):
        raise StatusError(f"status: {path or 'reply'}: expected an object, got {type(data).__name__}")
    if key not in data:
        raise StatusError(f"status: {path}{key}: missing")
    return data[key]


def _int(data: Any, key: str, path: str, *, optional: bool = False) -> Any:
    value = _get(data, key, path)
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatusError(f"status: {path}{key}: expected an integer, got {value!r:.80}")
    return value


def _float(data: Any, key: str, path: str) -> float | None:
    value = _get(data, key, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusError(f"status: {path}{key}: expected a number, got {value!r:.80}")
    return float(value)


def _str(data: Any, key: str, path: str) -> str:
    value = _get(data, key, path)
    if not isinstance(value, str):
        raise StatusError(f"status: {path}{key}: expected a string, got {value!r:.80}")
    return value


def _list(data: Any, key: str, path: str, *, optional: bool = False) -> Any:
    value = _get(data, key, path)
    if optional and value is None:
        return None
    if not isinstance(value, list):
        raise StatusError(f"status: {path}{key}: expected a list, got {value!r:.80}")
    return value


def _ints(data: Any, key: str, path: str) -> tuple[int, ...]:
    values = _list(data, key, path)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise StatusError(f"status: {path}{key}: expected a list of integers, got {values!r:.80}")
    return tuple(values)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One registered node as the master knows it."""

    node: int
    host: str
    alive: bool
    agent_pid: int | None

    @classmethod
    def from_message(cls, data: Any, path: str) -> NodeRow:
        """Validate one node row (``path`` names it in errors)."""
        alive = _get(data, "alive", path)
        if not isinstance(alive, bool):
            raise StatusError(f"status: {path}alive: expected true or false, got {alive!r:.80}")
        return cls(
            _int(data, "node", path),
            _str(data, "host", path),
            alive,
            _int(data, "agent_pid", path, optional=True),
        )


@dataclass(frozen=True, slots=True)
class StageRow:
    """One stage of a pipeline: the node that runs it and its layers."""

    node: int
    layers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PipelineRow:
    """One pipeline of the current plan."""

    microbatches: int | None
    stages: tuple[StageRow, ...]


@dataclass(frozen=True, slots=True)
class PlanRow:
    """The plan of the newest generation (the reporter's ``plan.json``)."""

    generation: int
    reason: str
    pipelines: tuple[PipelineRow, ...]

    @classmethod
    def from_message(cls, data: Any, path: str = "plan.") -> PlanRow:
        """Validate a plan record (``plan.json`` or a reply's ``plan``)."""
        pipelines = []
        for index, raw in enumerate(_list(data, "pipelines", path)):
            where = f"{path}pipelines[{index}]."
            stages = []
            for number, stage in enumerate(_list(raw, "stages", where)):
                at = f"{where}stages[{number}]."
                stages.append(StageRow(_int(stage, "node", at), _ints(stage, "layers", at)))
            pipelines.append(PipelineRow(_int(raw, "microbatches", where, optional=True), tuple(stages)))
        reason = _get(data, "reason", path)
        return cls(_int(data, "generation", path), "" if reason is None else str(reason), tuple(pipelines))

    def to_message(self) -> dict[str, Any]:
        """Plain data (the layout of ``plan.json``'s ``pipelines``)."""
        return {
            "generation": self.generation,
            "reason": self.reason,
            "pipelines": [
                {
                    "microbatches": p.microbatches,
                    "stages": [{"node": s.node, "layers": list(s.layers)} for s in p.stages],
                }
                for p in self.pipelines
            ],
        }


@dataclass(frozen=True, slots=True)
class RecoveryRow:
    """One recovery: what changed and what each phase cost."""

    generation: int
    lost: tuple[int, ...]
    joined: tuple[int, ...]
    phases_s: tuple[tuple[str, float], ...]
    layers_copied: int

    @classmethod
    def from_message(cls, data: Any, path: str) -> RecoveryRow:
        """Validate a recovery row (a ``metrics.jsonl`` ``recovery`` row or a reply's)."""
        phases = _get(data, "phases_s", path)
        if not isinstance(phases, dict):
            raise StatusError(f"status: {path}phases_s: expected an object, got {phases!r:.80}")
        checked = tuple((str(name), _float(phases, name, f"{path}phases_s.") or 0.0) for name in phases)
        copied = data.get("layers_copied") or 0
        if isinstance(copied, bool) or not isinstance(copied, int):
            raise StatusError(f"status: {path}layers_copied: expected an integer, got {copied!r:.80}")
        return cls(
            _int(data, "generation", path),
            _ints(data, "lost", path),
            _ints(data, "joined", path),
            checked,
            copied,
        )

    def to_message(self) -> dict[str, Any]:
        """Plain data with the keys of a ``recovery`` row (what :func:`recovery_line` reads)."""
        return {
            "generation": self.generation,
            "lost": list(self.lost),
            "joined": list(self.joined),
            "phases_s": dict(self.phases_s),
            "layers_copied": self.layers_copied,
        }


_PROGRESS_INTS = ("step", "total_steps", "nodes", "generation")
_PROGRESS_FLOATS = ("loss", "steps_per_s", "samples_per_s")


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything ``oobleck status`` shows about one job."""

    run_dir: str
    state: str
    """``running``, or how the job ended (``completed (reason)``)."""
    progress: Progress
    nodes: tuple[NodeRow, ...] | None
    """Every registered node (None: unknown, no agents.json yet)."""
    plan: PlanRow | None
    """The newest generation's plan (None: no plan.json yet)."""
    recoveries: tuple[RecoveryRow, ...]
    """The last :data:`RECOVERIES_SHOWN` recoveries, newest last."""

    def to_message(self) -> dict[str, Any]:
        """Plain JSON data; :meth:`from_message` reads it back."""
        progress = {name: getattr(self.progress, name) for name in (*_PROGRESS_INTS, *_PROGRESS_FLOATS)}
        return {
            "run_dir": self.run_dir,
            "state": self.state,
            "progress": {**progress, "pipelines": self.progress.pipelines},
            "nodes": None
            if self.nodes is None
            else [
                {"node": n.node, "host": n.host, "alive": n.alive, "agent_pid": n.agent_pid}
                for n in self.nodes
            ],
            "plan": None if self.plan is None else self.plan.to_message(),
            "recoveries": [r.to_message() for r in self.recoveries],
        }

    @classmethod
    def from_message(cls, data: Any) -> StatusView:
        """Validate a view received from a master (never trusted).

        Args:
            data: The reply's ``status`` object.

        Returns:
            The view.

        Raises:
            StatusError: A field is missing or has the wrong type (named by its path).
        """
        raw = _get(data, "progress", "")
        ints = [_int(raw, name, "progress.") for name in _PROGRESS_INTS]
        floats = [_float(raw, name, "progress.") for name in _PROGRESS_FLOATS]
        progress = Progress(
            step=ints[0],
            total_steps=ints[1],
            loss=floats[0],
            steps_per_s=floats[1],
            samples_per_s=floats[2],
            nodes=ints[2],
            generation=ints[3],
            pipelines=_int(raw, "pipelines", "progress.", optional=True),
        )
        nodes = _list(data, "nodes", "", optional=True)
        plan = _get(data, "plan", "")
        recoveries = _list(data, "recoveries", "")[-RECOVERIES_SHOWN:]
        return cls(
            run_dir=_str(data, "run_dir", ""),
            state=_str(data, "state", ""),
            progress=progress,
            nodes=None
            if nodes is None
            else tuple(NodeRow.from_message(row, f"nodes[{i}].") for i, row in enumerate(nodes)),
            plan=None if plan is None else PlanRow.from_message(plan),
            recoveries=tuple(
                RecoveryRow.from_message(r, f"recoveries[{i}].") for i, r in enumerate(recoveries)
            ),
        )


def _layers(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0]) if layers else "-"


def render(view: StatusView) -> str:
    """The text of ``oobleck status`` (the same for a run dir and a live master).

    Args:
        view: The job's status.

    Returns:
        Text lines, newline-terminated.
    """
    lines = [f"run dir  {view.run_dir}", f"job      {view.state}", f"progress {progress_line(view.progress)}"]
    if view.progress.steps_per_s:
        lines.append(f"rate     {view.progress.steps_per_s:.2f} steps/s over the last steps of generation")
    if view.nodes is not None:
        alive = sum(1 for n in view.nodes if n.alive)
        lines.append(f"nodes    {alive} alive of {len(view.nodes)} registered")
        for row in view.nodes:
            mark = "alive" if row.alive else "gone"
            lines.append(f"  node {row.node}: {row.host} {mark} agent pid {row.agent_pid}")
    if view.plan is not None:
        plan = view.plan
        lines.append(
            f"plan     generation {plan.generation}: {len(plan.pipelines)} pipelines ({plan.reason})"
        )
        for index, pipeline in enumerate(plan.pipelines):
            stages = "  ".join(f"node {s.node}: layers {_layers(s.layers)}" for s in pipeline.stages)
            lines.append(f"  pipeline {index} ({pipeline.microbatches} microbatches): {stages}")
    else:
        lines.append("plan     unknown (no plan.json yet)")
    if view.recoveries:
        lines.append("recoveries (newest last)")
        lines += [f"  {recovery_line(r.to_message())}" for r in view.recoveries]
    else:
        lines.append("recoveries none")
    return "\n".join(lines) + "\n"
