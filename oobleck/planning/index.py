"""A lasting index of a plan for incremental re-planning: node -> (pipeline, stage, layer range).

A re-plan after one loss touches one or two pipelines, but answering its questions from the plan
alone is O(nodes): which pipeline holds node ``n``, which is the largest pipeline (the last among
equals), which surviving node with the lowest id holds layer ``l``, how many pipelines run each
template. The index answers each in O(log pipelines) or O(templates), and a reconfiguration
updates it in O(damaged pipelines x nodes per pipeline), so the cost of a re-plan does not grow
with N. Holders are kept per (template, template node index), not per layer: a pipeline that
changes moves each of its dozen nodes once instead of each of its ~100 layers' holders.

The index is built once per chain of plans (O(nodes + pipelines x layers)) and shared along it by
version rerooting (Baker's trick for persistent arrays): the index holds the state of one plan,
every plan of the chain holds a version handle, and each version that is not current holds the
edits that turn the current state into its own. Asking about an older plan (the benchmark re-plans
one plan many times; the simulator chains them) replays the edits between the two versions only.

Assumptions:
    * Pipeline keys are integers that sort like the pipelines' positions; a pipeline keeps its key
      while it lives, new pipelines get keys above every existing one (appended at the end).
    * Pipelines of one kind (``batch.kind_of``) run ``b`` or ``b + 1`` microbatches, the ``+1``
      going to the first ones by key (what ``distribute_batch`` produces); a plan built otherwise
      (by hand, or a JSON from elsewhere) is indexed with ``leveled = False`` and re-planned in
      full.
    * Not thread-safe by itself: callers hold :attr:`PlanIndex.lock` while they reroot, read and
      commit (``take_index`` returns with it held).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.planning.batch import Kind, kind_of
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan

KEY_GAP = 1 << 20
"""Distance between the keys of consecutive pipelines of a freshly indexed plan."""

_MISSING: Any = object()
"""Marks a dict entry that does not exist (in an edit: delete it)."""

_SET, _INSERT, _DELETE, _HOLDERS, _REMAP = 0, 1, 2, 3, 4
Edit = tuple[int, Any, Any, Any]
"""``(_SET, dict, key, value)``, ``(_INSERT | _DELETE, sorted list, value, None)``,
``(_HOLDERS, columns, (template, nodes) before, (template, nodes) after)`` (one pipeline's
replicas; either side may be None), or ``(_REMAP, dict, pairs to delete, pairs to set)``
(deletions first, then one ``update``)."""

Column = tuple[PipelineTemplate, tuple[int, ...], list[list[int]]]
"""One template's holders: the template (kept alive, so its id is never reused while indexed), its
``node_of_layer`` table and, per template node index, the sorted ids of the nodes that play that
index in the pipelines running the template."""


class _Version:
    """One plan's version of the index: current (``toward is None``) or edits toward another."""

    __slots__ = ("edits", "toward")

    def __init__(self) -> None:
        self.edits: list[Edit] = []
        self.toward: _Version | None = None


@dataclass(frozen=True, slots=True)
class NodePlace:
    """Where a node works in a plan."""

    pipeline: int
    """Position of its pipeline in ``plan.pipelines``."""
    index: int
    """Template node index it plays in that pipeline."""
    stages: tuple[int, ...]
    """Indices of the stages it runs."""
    layers: tuple[int, int]
    """Its contiguous layer range ``[first, end)``."""


class PlanIndex:
    """Lookup tables of one plan, kept current across reconfigurations by versioned edits."""

    def __init__(self, plan: Plan) -> None:
        """Index ``plan`` (O(nodes + pipelines x layers)); prefer :func:`take_index`."""
        self.lock = threading.RLock()
        self.order: list[int] = [KEY_GAP * (position + 1) for position in range(len(plan.pipelines))]
        """Pipeline keys in plan order, ascending."""
        self.pipeline: dict[int, Pipeline] = dict(zip(self.order, plan.pipelines, strict=True))
        self.key_of_node: dict[int, int] = {}
        self.by_size: defaultdict[int, list[int]] = defaultdict(list)
        """Per node count: sorted keys of the pipelines of that size."""
        self.by_kind: defaultdict[Kind, list[int]] = defaultdict(list)
        """Per kind: sorted keys of its pipelines."""
        self.templates: dict[int, Any] = {}
        """Per template id in use: ``(template, pipelines running it)``."""
        self.levels: dict[Kind, tuple[int, int]] = {}
        """Per kind: ``(b, r)``: its first ``r`` pipelines by key run ``b + 1`` microbatches."""
        self.columns: dict[int, Column] = {}
        """Per template id ever indexed: its holders (:data:`Column`; empty lists once unused)."""
        self.leveled = True
        """Whether every kind's microbatches have the level form (see the module docstring)."""
        self.sync_memo: dict[tuple[Any, ...], tuple[Any, Any, float]] = {}
        """Gradient-sync seconds per (profile id, hardware id, pipelines, template ids); the value
        keeps the profile and hardware so an id is never matched after it was reused."""
        self.current = _Version()
        for key, pipeline in self.pipeline.items():
            self.by_size[pipeline.template.num_nodes].append(key)
            self.by_kind[kind_of(pipeline.template)].append(key)
            entry = self.templates.get(id(pipeline.template))
            self.templates[id(pipeline.template)] = (pipeline.template, 1 + (entry[1] if entry else 0))
            for node in pipeline.nodes:
                self.key_of_node[node] = key
            slots = _column(self.columns, pipeline.template)[2]
            for slot, node in enumerate(pipeline.nodes):
                slots[slot].append(node)
        for _, _, slots in self.columns.values():
            for holders in slots:
                holders.sort()
        for kind, keys in self.by_kind.items():
            counts = [self.pipeline[key].microbatches for key in keys]
            low, plus = min(counts), sum(1 for count in counts if count > min(counts))
            self.levels[kind] = (low, plus)
            if counts != [low + 1] * plus + [low] * (len(counts) - plus):
                self.leveled = False

    # ---- queries (valid for the current version) -------------------------------------------

    def position(self, key: int) -> int:
        """Position in the plan of the pipeline with ``key``."""
        return bisect.bisect_left(self.order, key)

    def place(self, node: int) -> NodePlace | None:
        """Where ``node`` works: pipeline position, template node index, stages, layer range."""
        key = self.key_of_node.get(node)
        if key is None:
            return None
        pipeline = self.pipeline[key]
        index = pipeline.nodes.index(node)
        stages = tuple(s for s, stage in enumerate(pipeline.template.stages) if stage.node == index)
        return NodePlace(
            pipeline=self.position(key),
            index=index,
            stages=stages,
            layers=pipeline.template.layout.node_ranges[index],
        )

    def old_range(self, node: int) -> tuple[int, int] | None:
        """``node``'s layer range, or None when it holds no layer."""
        key = self.key_of_node.get(node)
        if key is None:
            return None
        pipeline = self.pipeline[key]
        return pipeline.template.layout.node_ranges[pipeline.nodes.index(node)]

    def sized(self, size: int, skip: set[int] | dict[int, Any], *, last: bool) -> int | None:
        """The last (or first) key of a pipeline of ``size`` nodes that is not in ``skip``."""
        keys = self.by_size.get(size, ())
        for key in reversed(keys) if last else keys:
            if key not in skip:
                return key
        return None

    def _layer_columns(self, layer: int) -> Iterator[list[int]]:
        """Per template in use: the sorted ids of the nodes that hold ``layer`` in its pipelines."""
        columns = self.columns
        for template_id in self.templates:
            _, node_of_layer, slots = columns[template_id]
            if layer < len(node_of_layer) and node_of_layer[layer] >= 0:
                yield slots[node_of_layer[layer]]

    def lowest_holder(self, layer: int, lost: set[int], load: dict[int, int]) -> int | None:
        """The lowest-id holder of ``layer`` that is neither lost nor loaded, or None.

        O(templates in use + nodes skipped): each template's holders are sorted, so its first
        eligible one is its lowest, and a template whose next holder is above the best so far stops.
        """
        best: int | None = None
        columns = self.columns
        # NOTE: _layer_columns inlined: this runs once per copy of a re-plan.
        for template_id in self.templates:
            _, node_of_layer, slots = columns[template_id]
            if layer >= len(node_of_layer) or node_of_layer[layer] < 0:
                continue
            for node in slots[node_of_layer[layer]]:
                if best is not None and node >= best:
                    break
                if node not in lost and not load.get(node):
                    best = node
                    break
        return best

    def surviving_holders(self, layer: int, lost: set[int]) -> list[int]:
        """Every surviving holder of ``layer``, sorted (O(pipelines); for rare fallbacks only)."""
        return sorted(node for holders in self._layer_columns(layer) for node in holders if node not in lost)

    def holders_in_order(self, plan: Plan, layer: int, lost: set[int]) -> Iterator[int]:
        """Surviving holders of ``layer`` in pipeline order, lazily (``plan`` is the indexed one)."""
        for pipeline in plan.pipelines:
            node = pipeline.nodes[pipeline.template.layout.node_of_layer[layer]]
            if node not in lost:
                yield node

    # ---- versions --------------------------------------------------------------------------

    def reroot(self, version: _Version) -> None:
        """Make ``version`` current by replaying the edits between it and the current one."""
        path = []
        step: _Version | None = version
        while step is not None and step.toward is not None:
            path.append(step)
            step = step.toward
        if step is not self.current:
            raise RuntimeError("plan index version does not belong to this index")
        for older in reversed(path):
            toward = older.toward
            assert toward is not None  # NOTE: every version on the path has a successor
            toward.edits = _apply(older.edits)
            toward.toward = older
            older.edits, older.toward = [], None
            self.current = older

    def commit(self, edits: Sequence[Edit]) -> _Version:
        """Apply ``edits`` to the current version; returns the new version (now current)."""
        new = _Version()
        previous = self.current
        previous.edits = _apply(edits)
        previous.toward = new
        self.current = new
        return new

    # ---- edit builders ---------------------------------------------------------------------

    def change_edits(
        self, touched: Sequence[tuple[int, Pipeline | None]], shares: Sequence[tuple[int, Pipeline]]
    ) -> list[Edit]:
        """Edits that turn the current plan's pipelines into the re-planned ones.

        Args:
            touched: ``(key, new pipeline or None: removed)`` for pipelines whose nodes or
                template may have changed (keys of existing pipelines).
            shares: ``(key, new pipeline)`` for pipelines whose microbatch count alone changed.

        Returns:
            Edits of the lists and maps; node and pipeline maps change as one edit each.
        """
        edits: list[Edit] = []
        dropped_nodes: list[tuple[int, int]] = []
        placed_nodes: list[tuple[int, int]] = []
        old_entries: list[tuple[int, Pipeline]] = []
        new_entries: list[tuple[int, Pipeline]] = []
        for key, new in touched:
            old = self.pipeline[key]
            before, after = old.template, new.template if new is not None else None
            if new is None or new.nodes != old.nodes or after is not before:
                edits += self.holder_edits(old, new)
            old_entries.append((key, old))
            dropped_nodes.extend((node, key) for node in old.nodes)
            if new is None:
                edits.append((_DELETE, self.order, key, None))
            if after is None or after.num_nodes != before.num_nodes:
                edits.append((_DELETE, self.by_size[before.num_nodes], key, None))
                if after is not None:
                    edits.append((_INSERT, self.by_size[after.num_nodes], key, None))
            if after is None or kind_of(after) != kind_of(before):
                edits.append((_DELETE, self.by_kind[kind_of(before)], key, None))
                if after is not None:
                    edits.append((_INSERT, self.by_kind[kind_of(after)], key, None))
            if new is not None:
                new_entries.append((key, new))
                placed_nodes.extend((node, key) for node in new.nodes)
        for key, new in shares:
            old_entries.append((key, self.pipeline[key]))
            new_entries.append((key, new))
        edits.append((_REMAP, self.key_of_node, tuple(dropped_nodes), tuple(placed_nodes)))
        edits.append((_REMAP, self.pipeline, tuple(old_entries), tuple(new_entries)))
        return edits

    def holder_edits(self, old: Pipeline | None, new: Pipeline | None) -> list[Edit]:
        """The edit of the holder columns when ``old`` becomes ``new`` (either may be None)."""
        before = (old.template, old.nodes) if old is not None else None
        after = (new.template, new.nodes) if new is not None else None
        if before is not None and after is not None and before[0] is after[0] and before[1] == after[1]:
            return []
        return [(_HOLDERS, self.columns, before, after)]

    def set_edit(self, table: dict[Any, Any], key: Any, value: Any) -> Edit:
        """An edit that sets ``table[key]`` (``value`` None: deletes it)."""
        return (_SET, table, key, _MISSING if value is None else value)


def _column(columns: dict[int, Column], template: PipelineTemplate) -> Column:
    """``template``'s entry of ``columns``, created empty on first use."""
    column = columns.get(id(template))
    if column is None:
        column = columns[id(template)] = (
            template,
            template.layout.node_of_layer,
            [[] for _ in range(template.num_nodes)],
        )
    return column


_LOCK = threading.Lock()


def take_index(plan: Plan) -> PlanIndex:
    """The index of ``plan``'s chain, rerooted at ``plan`` and returned with its lock held.

    Builds it on first use (O(nodes + pipelines x layers)); afterwards rerooting costs what the
    reconfigurations between the current plan and ``plan`` changed. The caller must release
    ``index.lock`` (``try/finally``) and, for a plan it derives, call :func:`attach`.
    """
    with _LOCK:
        handle = plan._index
        if handle is None:
            index = PlanIndex(plan)
            handle = (index, index.current)
            object.__setattr__(plan, "_index", handle)
    index, version = handle
    index.lock.acquire()
    try:
        index.reroot(version)
    except BaseException:
        index.lock.release()
        raise
    return index


def attach(plan: Plan, index: PlanIndex, version: _Version) -> None:
    """Make ``version`` of ``index`` the index of ``plan`` (a plan derived by reconfiguration)."""
    object.__setattr__(plan, "_index", (index, version))


def _move_holders(
    columns: dict[int, Column],
    before: tuple[PipelineTemplate, tuple[int, ...]] | None,
    after: tuple[PipelineTemplate, tuple[int, ...]] | None,
) -> None:
    """Replace one pipeline's holders ``before`` by ``after`` in the sorted columns (in place).

    NOTE: the lists are multisets while a re-plan's edits are applied (a node may enter one
    pipeline before it left another), so a value is deleted where bisect finds it. A node that
    keeps its template index (same template) stays where it is.
    """
    insort, find = bisect.insort, bisect.bisect_left
    old_nodes = before[1] if before is not None else ()
    new_nodes = after[1] if after is not None else ()
    same = before is not None and after is not None and before[0] is after[0]
    if before is not None:
        slots = columns[id(before[0])][2]
        for slot, node in enumerate(old_nodes):
            if not (same and new_nodes[slot] == node):
                column = slots[slot]
                del column[find(column, node)]
    if after is not None:
        slots = _column(columns, after[0])[2]
        for slot, node in enumerate(new_nodes):
            if not (same and old_nodes[slot] == node):
                insort(slots[slot], node)


def _apply(edits: Sequence[Edit]) -> list[Edit]:
    """Apply ``edits`` in order; returns the edits that undo them (in the order to apply)."""
    undo: list[Edit] = []
    insort, find = bisect.insort, bisect.bisect_left
    for edit in edits:
        kind, target, key, value = edit
        if kind == _SET:
            previous = target.get(key, _MISSING)
            if value is _MISSING:
                del target[key]
            else:
                target[key] = value
            undo.append((_SET, target, key, previous))
        elif kind == _INSERT:
            insort(target, key)
            undo.append((_DELETE, target, key, None))
        elif kind == _DELETE:
            del target[find(target, key)]
            undo.append((_INSERT, target, key, None))
        elif kind == _REMAP:
            for name, _ in key:
                del target[name]
            target.update(value)
            undo.append((_REMAP, target, value, key))
        else:
            _move_holders(target, key, value)
            undo.append((_HOLDERS, target, value, key))
    undo.reverse()
    return undo
