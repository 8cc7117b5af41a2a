"""Pipeline templates stated by hand (job YAML ``pipelines:`` or ``api.main(pipelines=...)``).

The original Oobleck's ColossalAI plugin lets a user write ``PipelineTemplate(model, [modules per
stage])`` and checks the split; this module is that check, torch-free, turning layer-index lists
into the same :class:`~oobleck.planning.plan.PipelineTemplate` objects the generator produces, so
instantiation, batch split and reconfiguration run over them unchanged.

Assumptions:
    * A stage is a contiguous ascending run of layer indices; stages follow in layer order and
      cover ``0 .. L-1`` exactly once, so layer 0 (the embedding) is in the first stage and layer
      ``L-1`` (the head) in the last, as the engine and the profile require.
    * Every stage spans ``tp_degree`` devices of one node (the job's ``tensor_parallel.max_degree``);
      a node holds ``gpus_per_node / tp_degree`` consecutive stages, so a template of ``S`` stages
      needs ``S * tp_degree`` ranks, a whole number of nodes (``ranks / gpus_per_node``).
    * The planner keeps one template per node count, so two manual templates may not need the same
      number of nodes.
    * Stage latency and memory are priced exactly as the generator prices them (``cost``), and a
      stage whose memory does not fit one device is refused here rather than out of memory later.
    * ``count`` (pipelines per template, :mod:`~oobleck.planning.counted`) pins the *composition*
      of the first plan only; the planner's own rule (minimise the makespan) would never mix a
      1-node template with larger ones, so a heterogeneous layout on few nodes needs it. Recovery
      re-plans with the planner's usual rules over the same templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.errors import ConfigError
from oobleck.planning.cost import (
    SendKind,
    combine_latency_s,
    layer_tables,
    send_bandwidth_bytes_per_s,
    send_s,
)
from oobleck.planning.hardware import GIB, HardwareSpec
from oobleck.planning.plan import PipelineTemplate, Stage
from oobleck.planning.profile import ModelProfile


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateSpec:
    """One hand-written template: layer indices per stage, and optionally its microbatches per step."""

    stages: tuple[tuple[int, ...], ...]
    """Layer indices of each stage, in pipeline order (``[[0, 1, 2], [3, 4, 5]]``)."""
    microbatches: int | None = None
    """Microbatches each pipeline of this template runs per step (the original's
    ``num_microbatches={template: n}``); None lets the planner split the batch."""
    count: int | None = None
    """Pipelines of this template in the first plan (the original's explicit template
    instantiation), >= 0; 0 keeps the template for recovery only. None lets the planner choose
    (:func:`~oobleck.planning.counted.counted_plan` has the rules)."""

    @classmethod
    def from_raw(cls, raw: Any, path: str) -> TemplateSpec:
        """Check the shape of one ``pipelines[i]`` entry as written in YAML or passed to the API.

        Args:
            raw: A mapping ``{stages: [[int, ...], ...], microbatches: int, count: int}`` (or a
                ``TemplateSpec``).
            path: Its key path for messages, e.g. ``pipelines[1]``.

        Returns:
            The spec; layer ranges are checked later against the model (:func:`check_specs`).

        Raises:
            ConfigError: Not a mapping, an unknown key, ``stages`` not a non-empty list of
                non-empty lists of integers, ``microbatches`` not an integer >= 1, or ``count``
                not an integer >= 0.
        """
        if isinstance(raw, TemplateSpec):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{path}: expected a mapping {{stages: [[layers...], ...], microbatches: n}}, got {raw!r}"
            )
        unknown = sorted(set(raw) - {"stages", "microbatches", "count"})
        if unknown:
            raise ConfigError(
                f"{path}.{unknown[0]}: unknown key; valid keys here: stages, microbatches, count"
            )
        stages = raw.get("stages")
        if not isinstance(stages, list | tuple) or not stages:
            raise ConfigError(
                f"{path}.stages: expected a non-empty list of stages (lists of layer indices), got {stages!r}"
            )
        parsed: list[tuple[int, ...]] = []
        for j, stage in enumerate(stages):
            where = f"{path}.stages[{j}]"
            if not isinstance(stage, list | tuple) or not stage:
                raise ConfigError(f"{where}: expected a non-empty list of layer indices, got {stage!r}")
            for layer in stage:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise ConfigError(f"{where}: expected layer indices (integers >= 0), got {layer!r}")
            parsed.append(tuple(stage))
        microbatches = raw.get("microbatches")
        if microbatches is not None and (
            isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1
        ):
            raise ConfigError(f"{path}.microbatches: expected an integer >= 1, got {microbatches!r}")
        count = raw.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ConfigError(
                f"{path}.count: expected an integer >= 0 (pipelines of this template in the first plan), "
                f"got {count!r}"
            )
        return cls(stages=tuple(parsed), microbatches=microbatches, count=count)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written in the job YAML."""
        out: dict[str, Any] = {"stages": [list(stage) for stage in self.stages]}
        if self.microbatches is not None:
            out["microbatches"] = self.microbatches
        if self.count is not None:
            out["count"] = self.count
        return out


def parse_specs(raw: Any, path: str = "pipelines") -> tuple[TemplateSpec, ...]:
    """Parse a ``pipelines`` list (YAML or API) into specs, checking shapes only.

    Raises:
        ConfigError: Not a non-empty list, a bad entry (see :meth:`TemplateSpec.from_raw`), or
            ``microbatches`` or ``count`` set on some templates but not all.
    """
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(f"{path}: expected a non-empty list of templates {{stages: [[layers...], ...]}}")
    specs = tuple(TemplateSpec.from_raw(item, f"{path}[{i}]") for i, item in enumerate(raw))
    pinned = [spec.microbatches is not None for spec in specs]
    if any(pinned) and not all(pinned):
        missing = pinned.index(False)
        raise ConfigError(
            f"{path}[{missing}].microbatches: missing while other templates set it; set microbatches on "
            "every template or on none (then the planner splits the batch)"
        )
    spec_counts(specs, path)
    return specs


def spec_counts(specs: Sequence[TemplateSpec], path: str = "pipelines") -> tuple[int, ...] | None:
    """The templates' ``count`` values in order, or None when no template sets one.

    Raises:
        ConfigError: ``count`` set on some templates but not all (naming the first without one).
    """
    counts = [spec.count for spec in specs]
    if all(count is None for count in counts):
        return None
    present = [count for count in counts if count is not None]
    if len(present) < len(counts):
        missing = counts.index(None)
        raise ConfigError(
            f"{path}[{missing}].count: missing while other templates set it; set count on every template "
            "(0 keeps one for recovery only) or on none (then the planner chooses the pipelines)"
        )
    return tuple(present)


def check_specs(specs: Sequence[TemplateSpec], num_layers: int, path: str = "pipelines") -> None:
    """The original plugin's split checks: every layer once, order kept, embedding first, head last.

    Args:
        specs: The parsed templates.
        num_layers: ``L``, the model's layer count (embedding, blocks, head).
        path: Key path for messages.

    Raises:
        ConfigError: Naming ``pipelines[i].stages[j]``, the rule and the fix.
    """
    last = num_layers - 1
    for i, spec in enumerate(specs):
        stages = spec.stages
        for j, stage in enumerate(stages):
            where = f"{path}[{i}].stages[{j}]"
            outside = [layer for layer in stage if layer > last]
            if outside:
                raise ConfigError(
                    f"{where}: layer {outside[0]} does not exist; the model has layers 0..{last}"
                )
            if list(stage) != list(range(stage[0], stage[0] + len(stage))):
                raise ConfigError(
                    f"{where}: {list(stage)} is not a contiguous ascending run of layers; write a stage "
                    f"as consecutive indices, e.g. {list(range(min(stage), max(stage) + 1))}"
                )
        holder = next((j for j, stage in enumerate(stages) if 0 in stage), None)
        if stages[0][0] != 0:
            found = "" if holder is None else f" (it is in stages[{holder}])"
            raise ConfigError(
                f"{path}[{i}].stages[0]: the first stage must hold the embedding (layer 0){found}, "
                f"it starts at layer {stages[0][0]}"
            )
        for j in range(1, len(stages)):
            end, start = stages[j - 1][-1], stages[j][0]
            where = f"{path}[{i}].stages[{j}]"
            if start <= end:
                raise ConfigError(
                    f"{where}: layer {start} is already in stages[{j - 1}] (which ends at layer {end}); "
                    f"every layer belongs to exactly one stage, in layer order: start it at layer {end + 1}"
                )
            if start > end + 1:
                raise ConfigError(
                    f"{where}: {_layers(end + 1, start - 1)} in no stage (stages[{j - 1}] ends at {end}, "
                    f"this one starts at {start}); every layer must be covered once"
                )
        final = len(stages) - 1
        if stages[final][-1] != last:
            raise ConfigError(
                f"{path}[{i}].stages[{final}]: the last stage must hold the head (layer {last}); it ends "
                f"at layer {stages[final][-1]}, so {_layers(stages[final][-1] + 1, last)} in no stage"
            )
        if spec.microbatches is not None and spec.microbatches < len(stages):
            raise ConfigError(
                f"{path}[{i}].microbatches: {spec.microbatches} is fewer than its {len(stages)} stages; "
                f"1F1B needs one microbatch per stage: use >= {len(stages)}"
            )


def nodes_of(spec: TemplateSpec, gpus_per_node: int, tp_degree: int = 1) -> int:
    """Nodes a template needs: ``stages x tp_degree`` ranks over ``gpus_per_node`` devices per node.

    Exact only for specs :func:`manual_templates` accepted (a whole number of nodes).
    """
    return len(spec.stages) * tp_degree // gpus_per_node


def _layers(first: int, last: int) -> str:
    """``layer 3 is`` or ``layers 3..5 are``, for messages."""
    return f"layer {first} is" if first == last else f"layers {first}..{last} are"


def manual_templates(
    specs: Sequence[TemplateSpec],
    profile: ModelProfile,
    hardware: HardwareSpec,
    *,
    tp_degree: int = 1,
    max_nodes: int | None = None,
    path: str = "pipelines",
) -> tuple[PipelineTemplate, ...]:
    """Turn checked specs into priced templates, ascending by node count.

    Args:
        specs: The user's templates.
        profile: The model's per-layer costs (its layer count is ``L``).
        hardware: Node type: devices per node, memory, links.
        tp_degree: Devices per stage (``tensor_parallel.max_degree``).
        max_nodes: Most nodes the job plans for; a template needing more is refused. None: no cap.
        path: Key path for messages.

    Returns:
        One template per spec, sorted by ``num_nodes``; their stages carry the generator's latency
        and memory figures.

    Raises:
        ConfigError: A rule of :func:`check_specs`, a rank count that is not a whole number of
            nodes or exceeds ``max_nodes``, two templates of one node count, or a stage that does
            not fit one device's memory.
    """
    check_specs(specs, profile.num_layers, path)
    gpus = hardware.gpus_per_node
    if tp_degree < 1 or gpus % tp_degree:
        raise ConfigError(
            f"tensor_parallel.max_degree: {tp_degree} does not divide the {gpus} devices per node; "
            f"a node holds whole stages of {tp_degree} devices: pick a divisor of {gpus}"
        )
    per_node = gpus // tp_degree
    tables = layer_tables(profile)
    by_nodes: dict[int, int] = {}
    out: list[PipelineTemplate] = []
    for i, spec in enumerate(specs):
        count = len(spec.stages)
        ranks = count * tp_degree
        if ranks % gpus:
            raise ConfigError(
                f"{path}[{i}]: {count} stages x TP degree {tp_degree} = {ranks} ranks, not a whole number of "
                f"nodes of {gpus} devices; use a multiple of {per_node} stages"
            )
        nodes = nodes_of(spec, gpus, tp_degree)
        if max_nodes is not None and nodes > max_nodes:
            raise ConfigError(
                f"{path}[{i}]: {count} stages x TP degree {tp_degree} = {ranks} ranks need {nodes} nodes of "
                f"{gpus} devices, the job has {max_nodes}; use fewer stages or more nodes"
            )
        if nodes in by_nodes:
            raise ConfigError(
                f"{path}[{i}]: needs {nodes} nodes like {path}[{by_nodes[nodes]}]; the planner keeps one "
                "template per node count: drop one of them"
            )
        by_nodes[nodes] = i
        stages = []
        for j, stage in enumerate(spec.stages):
            back = count - 1 - j
            first, end = stage[0], stage[-1] + 1
            memory = tables.memory_bytes(first, end, tp_degree, back + 1)
            if memory > hardware.usable_memory_bytes:
                raise ConfigError(
                    f"{path}[{i}].stages[{j}]: needs {memory / GIB:.3f} GiB per device with {back + 1} "
                    f"microbatches in flight, a {hardware.name} device offers "
                    f"{hardware.usable_memory_bytes / GIB:.3f} GiB; split it into more stages or raise "
                    "device_memory_bytes"
                )
            kind: SendKind = "none" if back == 0 else ("inter" if back % per_node == 0 else "intra")
            compute = float(tables.compute_prefix_s[end] - tables.compute_prefix_s[first])
            sent = send_s(float(tables.output_bytes[end - 1]), send_bandwidth_bytes_per_s(hardware, kind))
            stages.append(
                Stage(
                    first_layer=first,
                    end_layer=end,
                    node=nodes - 1 - back // per_node,
                    gpus=tp_degree,
                    latency_s=float(
                        combine_latency_s(compute, hardware.tensor_parallel_speedup(tp_degree), sent)
                    ),
                    memory_bytes=memory,
                )
            )
        out.append(PipelineTemplate(num_nodes=nodes, gpus_per_node=gpus, stages=tuple(stages)))
    return tuple(sorted(out, key=lambda template: template.num_nodes))


def template_label(template: PipelineTemplate) -> str:
    """A short label naming a template by its layer split, e.g. ``2 nodes [0-2 | 3-5]``."""
    split = " | ".join(f"{stage.first_layer}-{stage.end_layer - 1}" for stage in template.stages)
    return f"{template.num_nodes} node{'s' if template.num_nodes != 1 else ''} [{split}]"
