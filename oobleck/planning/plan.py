"""Plain-data plan types shared by the planner, the simulator and the runtime.

Everything here is immutable and JSON-serialisable (``to_dict``/``from_dict``), so every worker that
computes a plan from the same inputs holds an equal object, and a plan can be logged, diffed and
replayed. The algorithms that produce these objects live in sibling modules (``templates``,
``instantiate``, ``batch``, ``reconfigure``); the costs they carry come from ``cost``.

Assumptions:
    * Stages of a template are listed in pipeline order; stages on the same node are consecutive
      and occupy that node's devices in order (stage ``k`` on a node starts at the device after the
      previous stage's last one).
    * A pipeline's ``nodes[i]`` is the node id that plays template node index ``i``.
    * A plan's members are its pipelines' nodes plus its ``spare_nodes`` (hot spares: up, holding
      no layer, taken first by a reconfiguration).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oobleck.planning.members import MemberChange


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """A contiguous layer range placed on ``gpus`` devices of one node of a template."""

    first_layer: int
    """Index of the first layer held."""
    end_layer: int
    """One past the last layer held (exclusive)."""
    node: int
    """Template-local node index (0 .. num_nodes-1)."""
    gpus: int
    """Devices of that node used by this stage (tensor parallel degree)."""
    latency_s: float
    """Forward + backward time of one microbatch, including sending to the next stage."""
    memory_bytes: int
    """Peak memory per device: state / gpus + activations of the microbatches in flight / gpus."""

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.end_layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [self.first_layer, self.end_layer],
            "node": self.node,
            "gpus": self.gpus,
            "latency_s": self.latency_s,
            "memory_bytes": self.memory_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage:
        first, end = data["layers"]
        return cls(
            first_layer=int(first),
            end_layer=int(end),
            node=int(data["node"]),
            gpus=int(data["gpus"]),
            latency_s=float(data["latency_s"]),
            memory_bytes=int(data["memory_bytes"]),
        )


@dataclass(frozen=True, slots=True)
class TemplateLayout:
    """Per-layer lookup tables of one template, derived from its stages once.

    Re-planning asks "which stage / node holds layer ``l``" for every layer of every pipeline, and
    ``sum``/``max`` of the stage latencies for every pipeline; with thousands of nodes that made the
    stage scans the bulk of a reconfiguration. Many pipelines share one template object, so the
    tables are built once per template (see :attr:`PipelineTemplate.layout`).
    """

    stage_of_layer: tuple[int, ...]
    """Per layer ``0 .. max(end_layer) - 1``: the first stage holding it, ``-1`` if none does."""
    node_of_layer: tuple[int, ...]
    """Per layer: the template node index of that stage, ``-1`` if no stage holds it."""
    node_ranges: tuple[tuple[int, int], ...]
    """Per template node index: the layer range ``[first, end)`` spanning its stages."""
    sum_latency_s: float
    max_latency_s: float
    kind: tuple[int, float, float]
    """``(stages, sum_latency_s, max_latency_s)``: what the batch split sees (``batch.kind_of``),
    asked several times per re-plan, so kept as one tuple."""

    @classmethod
    def of(cls, template: PipelineTemplate) -> TemplateLayout:
        """Tables of ``template``; use :attr:`PipelineTemplate.layout`, which caches them."""
        stages = template.stages
        size = max(stage.end_layer for stage in stages)
        stage_of_layer = [-1] * size
        for index, stage in enumerate(stages):
            for layer in stage.layers:
                if stage_of_layer[layer] < 0:
                    stage_of_layer[layer] = index
        ranges = [(template.num_layers, 0)] * template.num_nodes
        for stage in stages:
            first, end = ranges[stage.node]
            ranges[stage.node] = (min(first, stage.first_layer), max(end, stage.end_layer))
        sum_latency_s = sum(stage.latency_s for stage in stages)
        max_latency_s = max(stage.latency_s for stage in stages)
        return cls(
            stage_of_layer=tuple(stage_of_layer),
            node_of_layer=tuple(stages[index].node if index >= 0 else -1 for index in stage_of_layer),
            node_ranges=tuple(ranges),
            sum_latency_s=sum_latency_s,
            max_latency_s=max_latency_s,
            kind=(len(stages), sum_latency_s, max_latency_s),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineTemplate:
    """The best pipeline shape for ``num_nodes`` nodes: stages, their layers and devices.

    Its 1F1B iteration time for ``m`` microbatches is ``sum(latency) + (m - 1) * max(latency)``:
    the first microbatch crosses every stage once, then the slowest stage paces the rest.
    """

    num_nodes: int
    gpus_per_node: int
    stages: tuple[Stage, ...]
    _layout: TemplateLayout | None = field(default=None, init=False, repr=False, compare=False)
    """Cache behind :attr:`layout`; excluded from init, repr, equality, hashing and JSON."""

    @property
    def layout(self) -> TemplateLayout:
        """Per-layer tables, built on first use and kept on the (frozen) template.

        NOTE: a cache, not state: it is a pure function of ``stages``, so setting it through
        ``object.__setattr__`` keeps the template immutable in every observable way. It is lazy so
        that building a template costs what it did; only templates that are planned with pay.
        """
        layout = self._layout
        if layout is None:
            layout = TemplateLayout.of(self)
            object.__setattr__(self, "_layout", layout)
        return layout

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_layers(self) -> int:
        return self.stages[-1].end_layer

    @property
    def sum_latency_s(self) -> float:
        return self.layout.sum_latency_s

    @property
    def max_latency_s(self) -> float:
        return self.layout.max_latency_s

    def iteration_time_s(self, microbatches: int) -> float:
        """1F1B time of one step with ``microbatches`` microbatches (>= num_stages)."""
        return self.sum_latency_s + (microbatches - 1) * self.max_latency_s

    def stage_of_layer(self, layer: int) -> int:
        """Index of the stage that holds ``layer``."""
        table = self.layout.stage_of_layer
        if 0 <= layer < len(table) and table[layer] >= 0:
            return table[layer]
        raise IndexError(f"layer {layer} is outside 0..{self.num_layers - 1}")

    def stage_devices(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Per stage: (template node index, local device indices on that node)."""
        next_device: dict[int, int] = {}
        placement = []
        for stage in self.stages:
            start = next_device.get(stage.node, 0)
            placement.append((stage.node, tuple(range(start, start + stage.gpus))))
            next_device[stage.node] = start + stage.gpus
        return tuple(placement)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "stages": [stage.to_dict() for stage in self.stages],
            "iteration_time_s": self.iteration_time_s(self.num_stages),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineTemplate:
        return cls(
            num_nodes=int(data["nodes"]),
            gpus_per_node=int(data["gpus_per_node"]),
            stages=tuple(Stage.from_dict(stage) for stage in data["stages"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """A running instance of a template on concrete node ids."""

    template: PipelineTemplate
    nodes: tuple[int, ...]
    """Node ids; ``nodes[i]`` plays template node index ``i``."""
    microbatches: int
    """Microbatches this pipeline runs per step (``b_i``)."""

    def __post_init__(self) -> None:
        if len(self.nodes) != self.template.num_nodes:
            raise ValueError(
                f"pipeline has {len(self.nodes)} nodes but its template needs {self.template.num_nodes}"
            )
        if self.microbatches < self.template.num_stages:
            raise ValueError(
                f"pipeline gets {self.microbatches} microbatches but has {self.template.num_stages} stages"
            )

    @classmethod
    def trusted(cls, template: PipelineTemplate, nodes: tuple[int, ...], microbatches: int) -> Pipeline:
        """A pipeline whose ``__post_init__`` checks the caller guarantees, built without them.

        NOTE: for incremental re-planning only (it rebuilds a dozen pipelines per loss from a
        template chosen by node count and a batch split that gives each stage a microbatch); a
        frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` and then
        validates, which was a tenth of a re-plan. The result equals ``Pipeline(...)``.
        """
        pipeline = _new(cls)
        _PIPELINE_TEMPLATE(pipeline, template)
        _PIPELINE_NODES(pipeline, nodes)
        _PIPELINE_MICROBATCHES(pipeline, microbatches)
        return pipeline

    @property
    def iteration_time_s(self) -> float:
        return self.template.iteration_time_s(self.microbatches)

    def node_of_stage(self, stage: int) -> int:
        """Node id that runs ``stage``."""
        return self.nodes[self.template.stages[stage].node]

    def layers_of_node(self, node: int) -> tuple[int, ...]:
        """Layers that node id ``node`` holds in this pipeline (empty if it is not a member)."""
        return tuple(
            layer
            for stage in self.template.stages
            if self.nodes[stage.node] == node
            for layer in stage.layers
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "stages": [
                {**stage.to_dict(), "node_id": self.nodes[stage.node]} for stage in self.template.stages
            ],
            "microbatches": self.microbatches,
            "iteration_time_s": self.iteration_time_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], gpus_per_node: int) -> Pipeline:
        nodes = tuple(int(node) for node in data["nodes"])
        template = PipelineTemplate(
            num_nodes=len(nodes),
            gpus_per_node=gpus_per_node,
            stages=tuple(Stage.from_dict(stage) for stage in data["stages"]),
        )
        return cls(template=template, nodes=nodes, microbatches=int(data["microbatches"]))


_new = object.__new__
_PIPELINE_TEMPLATE, _PIPELINE_NODES, _PIPELINE_MICROBATCHES = (
    Pipeline.__dict__[name].__set__ for name in ("template", "nodes", "microbatches")
)
"""The slot setters of :class:`Pipeline`: a C-level store each, bypassing the frozen ``__setattr__``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A complete execution plan: pipelines, their nodes and their share of the global batch."""

    pipelines: tuple[Pipeline, ...]
    global_microbatches: int
    """B: microbatches per step over all pipelines; never changes during a job."""
    microbatch_size: int
    fault_tolerance: int
    """f: the plan keeps at least f + 1 pipelines while nodes allow.

    The guarantee comes from the pipelines alone: with ``f + 1`` of them, any ``f`` simultaneous
    failures leave a replica of every layer. Spares hold no layer, so they add no replica; what
    they add is that each of the next ``len(spare_nodes)`` failures is absorbed at full speed (the
    spare takes the lost node's place, no other pipeline changes), after which the plan still has
    its ``f + 1`` pipelines and tolerates ``f`` more."""
    iteration_time_s: float
    """Predicted step time: slowest pipeline plus the cross-pipeline gradient sync."""
    spare_nodes: tuple[int, ...] = ()
    """Members that run no pipeline, sorted: hot spares a reconfiguration takes first. The planner
    leaves nodes idle only when using them is infeasible or slower (see ``instantiate``)."""
    _nodes: tuple[int, ...] | MemberChange | None = field(default=None, init=False, repr=False, compare=False)
    """Cache behind :attr:`nodes` (a :class:`MemberChange` until first read, for re-planned plans);
    excluded from init, repr, equality, hashing and JSON."""
    _template_counts: tuple[tuple[PipelineTemplate, int], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """Cache behind :attr:`template_counts`; excluded like ``_nodes``."""
    _index: Any = field(default=None, init=False, repr=False, compare=False)
    """The re-planning index (``oobleck.planning.index.PlanIndex``) this plan owns, if built; see
    :func:`oobleck.planning.index.take_index`. Excluded from init, repr, equality, hashing, JSON."""

    def __post_init__(self) -> None:
        total = sum(pipeline.microbatches for pipeline in self.pipelines)
        if total != self.global_microbatches:
            raise ValueError(
                f"pipelines run {total} microbatches, the global batch has {self.global_microbatches}"
            )
        if list(self.spare_nodes) != sorted(set(self.spare_nodes)):
            raise ValueError(f"spare_nodes must be sorted and distinct, got {list(self.spare_nodes)}")
        nodes = list(itertools.chain.from_iterable(pipeline.nodes for pipeline in self.pipelines))
        if len(nodes) != len(set(nodes)):
            raise ValueError("a node appears in more than one pipeline")
        if not set(self.spare_nodes).isdisjoint(nodes):
            raise ValueError("a spare node also runs a pipeline")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the plan without its re-planning index (a cache, rebuilt on demand).

        Members are pickled resolved, so no chain of :class:`MemberChange` travels with the plan.
        """
        state = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "_index"}
        state["_nodes"] = self.nodes
        return state

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_index", None)

    @classmethod
    def trusted(
        cls,
        *,
        pipelines: tuple[Pipeline, ...],
        global_microbatches: int,
        microbatch_size: int,
        fault_tolerance: int,
        iteration_time_s: float,
        spare_nodes: tuple[int, ...],
        nodes: tuple[int, ...] | MemberChange | None = None,
        template_counts: tuple[tuple[PipelineTemplate, int], ...] | None = None,
    ) -> Plan:
        """A plan whose invariants the caller guarantees, built without re-checking them.

        NOTE: for incremental re-planning only, which maintains the invariants ``__post_init__``
        checks (batch total, disjoint members) in its index: checking them again is O(nodes) and
        would make a re-plan at 16,384 nodes cost what a full one does. ``nodes`` and
        ``template_counts``, when known, seed the caches behind :attr:`nodes` and
        :attr:`template_counts`; ``nodes`` may be a :class:`MemberChange` (see
        :meth:`member_change`), so that the re-plan copies no list of every member.
        """
        plan = object.__new__(cls)
        for name, value in (
            ("pipelines", pipelines),
            ("global_microbatches", global_microbatches),
            ("microbatch_size", microbatch_size),
            ("fault_tolerance", fault_tolerance),
            ("iteration_time_s", iteration_time_s),
            ("spare_nodes", spare_nodes),
            ("_nodes", nodes),
            ("_template_counts", template_counts),
            ("_index", None),
        ):
            object.__setattr__(plan, name, value)
        return plan

    @property
    def nodes(self) -> tuple[int, ...]:
        """All member node ids (pipelines' and spares), sorted.

        NOTE: cached on the (frozen) plan because the planner and the simulator ask for it several
        times per membership change, and sorting thousands of ids each time showed up in profiles.
        """
        nodes = self._nodes
        if isinstance(nodes, tuple):
            return nodes
        if nodes is None:
            members = itertools.chain(self.spare_nodes, *(p.nodes for p in self.pipelines))
            nodes = tuple(sorted(members))
        else:
            nodes = nodes.resolve()
        object.__setattr__(self, "_nodes", nodes)
        return nodes

    def member_change(self, lost: Sequence[int], joined: Sequence[int]) -> MemberChange:
        """This plan's members minus ``lost`` plus ``joined`` (both sorted), computed when first read.

        NOTE: O(changes) now; the O(nodes) copy happens once, when the derived plan's :attr:`nodes`
        is first read (a re-plan never reads it), and chains of unread plans resolve iteratively.
        """
        nodes = self._nodes
        base = nodes if nodes is not None else self.nodes
        return MemberChange(base=base, lost=tuple(lost), joined=tuple(joined))

    @property
    def template_counts(self) -> tuple[tuple[PipelineTemplate, int], ...]:
        """``(template, pipelines running it)`` per distinct template (by identity), by node count.

        NOTE: cached like :attr:`nodes`; re-planning and the homogeneous baselines seed it, so the
        simulator and the recovery model read a plan's shape in O(templates), not O(pipelines).
        """
        counts = self._template_counts
        if counts is None:
            tally: dict[int, list[Any]] = {}
            for pipeline in self.pipelines:
                entry = tally.get(id(pipeline.template))
                if entry is None:
                    tally[id(pipeline.template)] = [pipeline.template, 1]
                else:
                    entry[1] += 1
            ordered = sorted(tally.values(), key=lambda entry: entry[0].num_nodes)
            counts = tuple((template, number) for template, number in ordered)
            object.__setattr__(self, "_template_counts", counts)
        return counts

    @property
    def pipeline_nodes(self) -> tuple[int, ...]:
        """Node ids that run a pipeline (members minus spares), sorted."""
        if not self.spare_nodes:
            return self.nodes
        spares = set(self.spare_nodes)
        return tuple(node for node in self.nodes if node not in spares)

    @property
    def global_batch_size(self) -> int:
        return self.global_microbatches * self.microbatch_size

    @property
    def samples_per_s(self) -> float:
        return self.global_batch_size / self.iteration_time_s

    def gradient_weight(self, pipeline: int) -> float:
        """Weight ``b_i / B`` of pipeline ``pipeline``'s summed microbatch gradients."""
        return self.pipelines[pipeline].microbatches / self.global_microbatches

    def first_microbatch(self, pipeline: int) -> int:
        """Index of the first global microbatch of the step that ``pipeline`` runs."""
        return sum(p.microbatches for p in self.pipelines[:pipeline])

    def holders(self, layer: int) -> tuple[int, ...]:
        """Node ids holding ``layer``, one per pipeline, in pipeline order."""
        return tuple(
            pipeline.nodes[pipeline.template.stages[pipeline.template.stage_of_layer(layer)].node]
            for pipeline in self.pipelines
        )

    def layers_of_node(self, node: int) -> tuple[int, ...]:
        for pipeline in self.pipelines:
            if node in pipeline.nodes:
                return pipeline.layers_of_node(node)
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipelines": [pipeline.to_dict() for pipeline in self.pipelines],
            "global_microbatches": self.global_microbatches,
            "microbatch_size": self.microbatch_size,
            "fault_tolerance": self.fault_tolerance,
            "iteration_time_s": self.iteration_time_s,
            "samples_per_s": self.samples_per_s,
            "spare_nodes": list(self.spare_nodes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], gpus_per_node: int) -> Plan:
        return cls(
            pipelines=tuple(Pipeline.from_dict(p, gpus_per_node) for p in data["pipelines"]),
            global_microbatches=int(data["global_microbatches"]),
            microbatch_size=int(data["microbatch_size"]),
            fault_tolerance=int(data["fault_tolerance"]),
            iteration_time_s=float(data["iteration_time_s"]),
            # NOTE: plans written before spare nodes existed have no key: no spares.
            spare_nodes=tuple(int(node) for node in data.get("spare_nodes", ())),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """One layer's parameters and optimizer state copied from a surviving holder to a new one."""

    layer: int
    src_node: int
    dst_node: int
    bytes: int

    @classmethod
    def trusted(cls, layer: int, src_node: int, dst_node: int, size_bytes: int) -> Transfer:
        """``Transfer(layer=..., src_node=..., dst_node=..., bytes=size_bytes)``, built faster.

        NOTE: a re-plan creates a few dozen copies; the frozen ``__init__`` (keyword arguments,
        one ``object.__setattr__`` per field) cost twice the C-level slot stores used here.
        """
        transfer = _new(cls)
        _TRANSFER_LAYER(transfer, layer)
        _TRANSFER_SRC(transfer, src_node)
        _TRANSFER_DST(transfer, dst_node)
        _TRANSFER_BYTES(transfer, size_bytes)
        return transfer

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "src_node": self.src_node,
            "dst_node": self.dst_node,
            "bytes": self.bytes,
        }


_TRANSFER_LAYER, _TRANSFER_SRC, _TRANSFER_DST, _TRANSFER_BYTES = (
    Transfer.__dict__[name].__set__ for name in ("layer", "src_node", "dst_node", "bytes")
)
"""The slot setters of :class:`Transfer` (see :meth:`Transfer.trusted`)."""
