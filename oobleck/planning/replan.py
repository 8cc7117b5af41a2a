"""Incremental re-planning: the rules of ``reconfigure`` applied to the damaged pipelines only.

The full re-plan (``reconfigure.full_replan``) walks every pipeline; after one loss all but one or
two of them come out as they went in. Here the same rules run on the touched pipelines (damaged
ones, plus a donor or a merge target), the others are asked about through the plan's
:class:`~oobleck.planning.index.PlanIndex` (largest pipeline, last among equals, and so on), the
batch is split per kind (``batch.split_by_kind``) and only pipelines whose share changed are
rebuilt. Cost: O(touched pipelines x layers + kinds + pipelines whose share changed), plus a
C-level copy of the plan's pipeline tuple (pipelines, not nodes: the member list of the new plan
is derived from the old one only when read, see ``Plan.member_change``).

Assumptions:
    * The result equals ``full_replan``'s (property-tested); where a rule would need every
      pipeline (restoring ``f + 1`` pipelines by splitting, a joined set that makes the batch
      unsplittable, degenerate latencies, a plan not in level form) :func:`incremental_replan`
      returns None and the caller re-plans in full.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from oobleck.errors import PlanningError, ReconfigurationError
from oobleck.planning.batch import Kind, _time, check_minimum, kind_of, split_by_kind
from oobleck.planning.cost import gradient_sync_s
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.index import Edit, PlanIndex
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan
from oobleck.planning.profile import ModelProfile
from oobleck.planning.rules import Shaper, take_spares

_SYNC_MEMO_SIZE = 64


class _FallbackError(Exception):
    """A rule needs every pipeline: re-plan in full."""


def incremental_replan(  # noqa: PLR0917 - mirrors full_replan's inputs plus the index and the rules
    plan: Plan,
    index: PlanIndex,
    lost: Sequence[int],
    joined: Sequence[int],
    by_size: dict[int, PipelineTemplate],
    profile: ModelProfile,
    hardware: HardwareSpec,
    shaper: Shaper,
) -> tuple[Plan, list[Edit], list[Pipeline]] | None:
    """``full_replan``'s plan, computed from the damaged pipelines and ``index`` (current at ``plan``).

    Args:
        plan: The plan in force; ``index`` must be rerooted at it (and locked).
        index: Its index.
        lost: Validated, sorted lost nodes.
        joined: Validated, sorted joined nodes.
        by_size: One template per node count.
        profile: Layer costs (step time).
        hardware: Node type (step time).
        shaper: The rules, with ``index.old_range`` as the old layer ranges.

    Returns:
        The new plan, the index edits that lead to it (not yet committed: the caller commits them
        after planning the copies against the old holders) and the touched pipelines (the only
        ones whose nodes or template may have changed); or None: re-plan in full.

    Raises:
        ReconfigurationError: as ``full_replan`` (a merge leftover with nowhere to go).
    """
    if not index.leveled:
        return None
    try:
        return _Replan(plan, index, by_size, shaper).run(lost, joined, profile, hardware)
    except _FallbackError:
        return None


class _Replan:
    """One incremental re-plan: touched groups by pipeline key, the rest read from the index."""

    def __init__(
        self, plan: Plan, index: PlanIndex, by_size: dict[int, PipelineTemplate], shaper: Shaper
    ) -> None:
        self.plan, self.index, self.by_size, self.shaper = plan, index, by_size, shaper
        self.groups: dict[int, list[int]] = {}
        """Touched pipelines by key: their node lists as the rules leave them."""
        self.removed: set[int] = set()
        """Keys of pipelines that no longer exist."""
        self.added: list[int] = []
        """Keys of new pipelines (joined nodes), above every old key."""

    def run(
        self, lost: Sequence[int], joined: Sequence[int], profile: ModelProfile, hardware: HardwareSpec
    ) -> tuple[Plan, list[Edit], list[Pipeline]]:
        plan, index, shaper = self.plan, self.index, self.shaper
        smallest = shaper.smallest
        lost_set = set(lost)
        # NOTE: lost spares removed by bisection: a plan may hold hundreds of spares, and a Python
        # scan of them per loss would make the re-plan grow with them (the copy is C-level).
        spares = list(plan.spare_nodes)
        for node in lost:
            position = bisect.bisect_left(spares, node)
            if position < len(spares) and spares[position] == node:
                del spares[position]
        for key in sorted({index.key_of_node[node] for node in lost if node in index.key_of_node}):
            group = take_spares(index.pipeline[key].nodes, lost_set, spares)
            if group:
                self.groups[key] = group
            else:
                self.removed.add(key)
        incoming = [] if plan.spare_nodes else list(joined)
        idle = [*spares, *joined] if plan.spare_nodes else spares
        short = [key for key in sorted(self.groups) if len(self.groups[key]) < smallest]
        for key in short:
            group = self.groups[key]
            while len(group) < smallest and incoming:
                group.append(incoming.pop(0))
        for key in short:
            receiver = self.groups[key]
            while len(receiver) < smallest:
                donor = self._largest_donor(key)
                if donor is None:
                    break
                shaper.give(receiver, self._touch(donor))
        idle.extend(self._merge())
        if len(index.order) - len(self.removed) < self.plan.fault_tolerance + 1:
            raise _FallbackError
        if incoming:
            if len(incoming) >= smallest:
                raise _FallbackError
            for node in incoming:
                target = self._smallest_open()
                if target is None:
                    idle.append(node)
                    continue
                group = self._touch(target)
                group[:] = shaper.cheapest([([*group, node],), ([node, *group],)])[0]
        return self._build(lost, joined, tuple(sorted(idle)), profile, hardware)

    def _touch(self, key: int) -> list[int]:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = list(self.index.pipeline[key].nodes)
        return group

    def _skip(self) -> set[int]:
        """Keys the index must not answer with: touched (their sizes changed) or removed."""
        return self.groups.keys() | self.removed

    def _largest_donor(self, receiver: int) -> int | None:
        """The largest pipeline above ``n0`` other than ``receiver``; the last among equals."""
        smallest = self.shaper.smallest
        skip = self._skip()
        for size in range(self.shaper.largest, smallest, -1):
            untouched = self.index.sized(size, skip, last=True)
            touched = [k for k, g in self.groups.items() if len(g) == size and k != receiver]
            best = max([*touched, *([untouched] if untouched is not None else [])], default=None)
            if best is not None:
                return best
        return None

    def _smallest_open(self) -> int | None:
        """The smallest pipeline below the largest template; the first among equals."""
        skip = self._skip()
        for size in range(self.shaper.smallest, self.shaper.largest):
            untouched = self.index.sized(size, skip, last=False)
            touched = [k for k, g in self.groups.items() if len(g) == size]
            best = min([*touched, *([untouched] if untouched is not None else [])], default=None)
            if best is not None:
                return best
        return None

    def _merge(self) -> list[int]:
        """Short pipelines merged in order (``Shaper.merge``); returns nodes left idle."""
        smallest = self.shaper.smallest
        short = [key for key in sorted(self.groups) if len(self.groups[key]) < smallest]
        pending: list[int] = []
        for key in short:
            group = self.groups.pop(key)
            self.removed.add(key)
            pending = self.shaper.cheapest([(pending + group,), (group + pending,)])[0] if pending else group
            if len(pending) >= smallest:
                self.groups[key] = pending
                self.removed.discard(key)
                pending = []
        if not pending:
            return []
        target = None
        skip = self._skip()
        for size in range(smallest, self.shaper.largest + 1):
            untouched = self.index.sized(size, skip, last=True)
            touched = [k for k, g in self.groups.items() if len(g) == size]
            target = max([*touched, *([untouched] if untouched is not None else [])], default=None)
            if target is not None:
                break
        if target is None:
            raise ReconfigurationError(
                f"only {len(pending)} nodes remain, the smallest pipeline needs {smallest}"
            )
        group = self._touch(target)
        if len(group) + len(pending) > self.shaper.largest:
            return pending
        group[:] = self.shaper.cheapest([(group + pending,), (pending + group,)])[0]
        return []

    def _build(
        self,
        lost: Sequence[int],
        joined: Sequence[int],
        spare_nodes: tuple[int, ...],
        profile: ModelProfile,
        hardware: HardwareSpec,
    ) -> tuple[Plan, list[Edit], list[Pipeline]]:
        plan, index, by_size = self.plan, self.index, self.by_size
        if any(len(group) not in by_size for group in self.groups.values()):
            raise _FallbackError
        kind_lists: dict[Kind, list[int]] = {}

        def keys_of(kind: Kind) -> list[int]:
            keys = kind_lists.get(kind)
            if keys is None:
                keys = kind_lists[kind] = list(index.by_kind.get(kind, ()))
            return keys

        new_template: dict[int, PipelineTemplate] = {}
        for key in sorted({*self.groups, *self.removed}):
            if key in index.pipeline:
                old_keys = keys_of(kind_of(index.pipeline[key].template))
                del old_keys[bisect.bisect_left(old_keys, key)]
            if key in self.groups:
                template = new_template[key] = by_size[len(self.groups[key])]
                bisect.insort(keys_of(kind_of(template)), key)
        kinds = [kind for kind, keys in index.by_kind.items() if keys and kind not in kind_lists]
        kinds += [kind for kind, keys in kind_lists.items() if keys]
        orders = [kind_lists[kind] if kind in kind_lists else index.by_kind[kind] for kind in kinds]
        try:
            check_minimum(kinds, [len(order) for order in orders], plan.global_microbatches)
        except PlanningError:
            raise _FallbackError from None
        levels = split_by_kind(kinds, orders, plan.global_microbatches)
        if levels is None:
            raise _FallbackError
        level_of = dict(zip(kinds, levels, strict=True))

        def count(kind: Kind, keys: list[int], key: int) -> int:
            base, plus = level_of[kind]
            return base + (1 if bisect.bisect_left(keys, key) < plus else 0)

        rebuilt: dict[int, Pipeline] = {}
        for key, group in self.groups.items():
            template = new_template[key]
            kind = kind_of(template)
            rebuilt[key] = Pipeline.trusted(template, tuple(group), count(kind, keys_of(kind), key))
        for kind, keys in zip(kinds, orders, strict=True):
            for key in _share_changed(
                keys, index.levels.get(kind), index.by_kind.get(kind, []), level_of[kind]
            ):
                if key in rebuilt:
                    continue
                old = index.pipeline[key]
                rebuilt[key] = Pipeline.trusted(old.template, old.nodes, count(kind, keys, key))
        pipelines = list(plan.pipelines)
        for key in sorted(self.removed, reverse=True):
            del pipelines[index.position(key)]
        order = [key for key in index.order if key not in self.removed] if self.removed else index.order
        for key, pipeline in rebuilt.items():
            pipelines[bisect.bisect_left(order, key)] = pipeline
        slowest = max(
            _time(kind[1], kind[2], base + (1 if plus else 0)) for kind, (base, plus) in level_of.items()
        )
        new_plan_pipelines = tuple(pipelines)
        edits = self._edits(rebuilt, level_of, kind_lists)
        sync = self._sync_s(new_plan_pipelines, edits, profile, hardware)
        in_use = {**self.index.templates, **self.template_counts}
        template_counts = tuple(
            sorted(((t, n) for t, n in in_use.values() if n), key=lambda entry: entry[0].num_nodes)
        )
        new_plan = Plan.trusted(
            pipelines=new_plan_pipelines,
            global_microbatches=plan.global_microbatches,
            microbatch_size=plan.microbatch_size,
            fault_tolerance=plan.fault_tolerance,
            iteration_time_s=slowest + sync,
            spare_nodes=spare_nodes,
            nodes=plan.member_change(lost, joined),
            template_counts=template_counts,
        )
        return new_plan, edits, [rebuilt[key] for key in sorted(self.groups)]

    def _edits(
        self,
        rebuilt: dict[int, Pipeline],
        level_of: dict[Kind, tuple[int, int]],
        kind_lists: dict[Kind, list[int]],
    ) -> list[Edit]:
        index = self.index
        edits: list[Edit] = []
        counts: dict[int, tuple[Any, int]] = {}

        def count_template(template: PipelineTemplate, change: int) -> None:
            template_id = id(template)
            entry = counts.get(template_id) or index.templates.get(template_id) or (template, 0)
            counts[template_id] = (template, entry[1] + change)

        touched = sorted({*self.removed, *self.groups})
        for key in touched:
            count_template(index.pipeline[key].template, -1)
            new = rebuilt.get(key)
            if new is not None:
                count_template(new.template, +1)
        shares = [(key, pipeline) for key, pipeline in rebuilt.items() if key not in self.groups]
        edits = index.change_edits([(key, rebuilt.get(key)) for key in touched], shares)
        for template_id, (template, number) in counts.items():
            edits.append(index.set_edit(index.templates, template_id, (template, number) if number else None))
        for kind, level in level_of.items():
            if index.levels.get(kind) != level:
                edits.append(index.set_edit(index.levels, kind, level))
        for kind in kind_lists:
            if kind not in level_of and kind in index.levels:
                edits.append(index.set_edit(index.levels, kind, None))
        self.template_counts = counts
        return edits

    def _sync_s(
        self,
        pipelines: tuple[Pipeline, ...],
        edits: list[Edit],
        profile: ModelProfile,
        hardware: HardwareSpec,
    ) -> float:
        """``gradient_sync_s`` of the new plan, memoised on (pipelines, distinct templates).

        NOTE: the sync time depends only on the pipeline count and the distinct templates; after
        most losses neither changes, and computing it walks every pipeline.
        """
        index = self.index
        in_use = {tid for tid, (_, number) in index.templates.items() if number}
        for template_id, (_, number) in self.template_counts.items():
            if number:
                in_use.add(template_id)
            else:
                in_use.discard(template_id)
        key = (id(profile), id(hardware), len(pipelines), frozenset(in_use))
        memo = index.sync_memo.get(key)
        if memo is not None and memo[0] is profile and memo[1] is hardware:
            return memo[2]
        sync = gradient_sync_s(pipelines, profile, hardware)
        if len(index.sync_memo) >= _SYNC_MEMO_SIZE:
            index.sync_memo.clear()
        index.sync_memo[key] = (profile, hardware, sync)
        return sync


def _share_changed(
    keys: list[int], old_level: tuple[int, int] | None, old_keys: list[int], new_level: tuple[int, int]
) -> list[int]:
    """Keys of ``keys`` (a kind's pipelines after the change) whose microbatch count may differ.

    Before, pipeline ``x`` ran ``b + [x < K]`` with ``K`` the key at rank ``r`` of the old list;
    after, ``b' + [x < K']``. Both are steps in key space, so the differing keys are one slice of
    the new list or its complement; touched pipelines are rebuilt anyway.
    """
    if old_level is None:
        return keys
    (base, plus), (new_base, new_plus) = old_level, new_level
    infinity = (keys[-1] if keys else 0) + (old_keys[-1] if old_keys else 0) + 1
    old_bound = old_keys[plus] if plus < len(old_keys) else infinity
    new_bound = keys[new_plus] if new_plus < len(keys) else infinity
    if new_base == base:
        low, high = sorted((old_bound, new_bound))
        return keys[bisect.bisect_left(keys, low) : bisect.bisect_left(keys, high)]
    # NOTE: one level up, counts stay where x < K_old and x >= K_new; one down, where x >= K_old
    # and x < K_new; everything else changes.
    if new_base == base + 1 and new_bound < old_bound:
        same = (new_bound, old_bound)
    elif new_base == base - 1 and old_bound < new_bound:
        same = (old_bound, new_bound)
    else:
        return keys
    start, end = bisect.bisect_left(keys, same[0]), bisect.bisect_left(keys, same[1])
    return keys[:start] + keys[end:]


@dataclass(frozen=True, slots=True)
class IndexHolders:
    """:class:`~oobleck.planning.transfer.Holders` answered by the old plan's index."""

    index: PlanIndex
    plan: Plan
    """The old plan (the index is current at it)."""
    lost: set[int]

    def lowest_idle(self, layer: int, load: dict[int, int]) -> int | None:
        return self.index.lowest_holder(layer, self.lost, load)

    def surviving(self, layer: int) -> list[int]:
        return self.index.surviving_holders(layer, self.lost)

    def in_order(self, layer: int) -> Iterator[int]:
        return self.index.holders_in_order(self.plan, layer, self.lost)
