"""The planning facade: templates built once, then plans, reconfigurations and recovery predictions.

The simulator and the runtime hold one ``Planner`` per job; every node builds its own from the
same profile and arguments and therefore computes the same plans.

Assumptions:
    * ``max_nodes`` is the largest cluster the job will ever run on; templates cover up to it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from oobleck.errors import ConfigError, ReconfigurationError
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.counted import counted_plan
from oobleck.planning.groups import plan_group_shape
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.instantiate import instantiate
from oobleck.planning.manual_templates import (
    TemplateSpec,
    manual_templates,
    nodes_of,
    spec_counts,
    template_label,
)
from oobleck.planning.plan import PipelineTemplate, Plan
from oobleck.planning.profile import ModelProfile
from oobleck.planning.reconfigure import Reconfiguration, reconfigure
from oobleck.planning.recovery import RecoveryConstants, RecoveryPrediction, predict_recovery
from oobleck.planning.step_time import StepConstants
from oobleck.planning.templates import generate_templates

logger = logging.getLogger(__name__)

_ROUNDS_MEMO_SIZE = 4096
"""Group-creation round counts kept per planner before the memo is dropped (bounds memory on long runs)."""


class Planner:
    """Plans for one job: fixed model, hardware, fault tolerance and global batch."""

    def __init__(
        self,
        profile: ModelProfile,
        hardware: HardwareSpec,
        *,
        fault_tolerance: int,
        global_microbatches: int,
        microbatch_size: int,
        max_nodes: int,
        max_gpus_per_stage: int | None = None,
        templates: Sequence[TemplateSpec] | None = None,
    ) -> None:
        """Generate the templates once (the expensive step, done before training starts).

        Args:
            profile: Per-layer costs of the model.
            hardware: Node type.
            fault_tolerance: ``f``; plans keep ``f + 1`` pipelines while nodes allow.
            global_microbatches: ``B``, fixed for the whole job.
            microbatch_size: Samples per microbatch.
            max_nodes: Largest cluster (and largest pipeline) to plan for.
            max_gpus_per_stage: Largest tensor-parallel degree (default: devices per node).
            templates: The user's own templates (job ``pipelines:``, see
                :mod:`~oobleck.planning.manual_templates`), used instead of generating; their stages
                span ``max_gpus_per_stage`` devices (default 1). None: generate.

        Raises:
            ConfigError: a bad argument, or a manual template that breaks a rule.
            PlanningError: the model fits on no pipeline of up to ``max_nodes`` nodes.
        """
        self.profile = profile
        self.hardware = hardware
        self.fault_tolerance = fault_tolerance
        self.global_microbatches = global_microbatches
        self.microbatch_size = microbatch_size
        self.max_nodes = max_nodes
        self.tied_pairs: tuple[tuple[int, int], ...] = tuple(
            (layer.tied_to, index) for index, layer in enumerate(profile.layers) if layer.tied_to is not None
        )
        """``(source, tied)`` layers of tied weights: the runtime builds a group for each pair."""
        self._rounds: dict[tuple[tuple[int, int], ...], tuple[tuple[PipelineTemplate, ...], int]] = {}
        """Group-creation rounds by templates in use (see :meth:`group_rounds`)."""
        self.manual: tuple[TemplateSpec, ...] | None = None if templates is None else tuple(templates)
        """The user's template specs, or None when the templates were generated."""
        self._pinned: dict[int, int] = {}
        """Manual templates' ``microbatches`` per step, by ``id`` of the template built from them."""
        self._counted: tuple[tuple[PipelineTemplate, ...], tuple[int, ...]] | None = None
        """Manual templates in ``pipelines:`` order and their ``count``, when the job sets counts."""
        if self.manual is not None:
            built = manual_templates(
                self.manual, profile, hardware, tp_degree=max_gpus_per_stage or 1, max_nodes=max_nodes
            )
            by_nodes = {template.num_nodes: template for template in built}
            in_order = tuple(
                by_nodes[nodes_of(spec, hardware.gpus_per_node, max_gpus_per_stage or 1)]
                for spec in self.manual
            )
            for spec, template in zip(self.manual, in_order, strict=True):
                if spec.microbatches is not None:
                    self._pinned[id(template)] = spec.microbatches
            counts = spec_counts(self.manual)
            if counts is not None:
                self._counted = (in_order, counts)
            self.templates: tuple[PipelineTemplate, ...] = built
        else:
            self.templates = generate_templates(
                profile,
                hardware,
                max_nodes=max_nodes,
                global_microbatches=global_microbatches,
                total_nodes=max_nodes,
                max_gpus_per_stage=max_gpus_per_stage,
            )

    @property
    def min_nodes(self) -> int:
        """``n0``: the fewest nodes one pipeline needs."""
        return self.templates[0].num_nodes

    def plan(self, node_ids: Sequence[int]) -> Plan:
        """The fastest plan on these nodes (see :func:`instantiate`).

        Nodes whose use would be infeasible or slower (more pipelines than the batch can feed) are
        left idle as the plan's ``spare_nodes``; ties go to using more nodes.

        With manual templates whose ``count`` is set, the plan has exactly those pipelines
        (:func:`~oobleck.planning.counted.counted_plan`: lowest node ids first, smallest
        template first, the remaining nodes spare, the planner's batch split), or a ConfigError
        says why they do not fit. With manual templates whose ``microbatches`` are set, each
        pipeline runs its template's count when those counts add up to the global batch (the
        original's ``num_microbatches``); otherwise the planner's split is kept, with a warning
        (the global batch never changes).

        Raises:
            ConfigError: duplicate node ids, or manual ``count`` values that do not fit these
                nodes, ``f`` or the batch.
            PlanningError: fewer than ``(f + 1) * n0`` nodes, or no combination fits.
        """
        if self._counted is not None:
            return self._pin(self._count(self._counted, node_ids, self.fault_tolerance))
        return self._pin(self._instantiate(node_ids, self.fault_tolerance))

    def restart_plan(self, node_ids: Sequence[int]) -> Plan:
        """The plan to restart from a checkpoint on these nodes, when reconfiguration is impossible.

        A restart keeps the job going with less redundancy rather than not at all: the plan keeps
        the largest fault tolerance ``f' <= f`` that ``(f' + 1) * n0 <= len(node_ids)`` allows.
        Manual ``count`` values are used when they fit these nodes with ``f'``; otherwise the
        planner chooses the pipelines, with a warning (as for unfitting ``microbatches`` pins).

        Raises:
            ConfigError: duplicate node ids.
            PlanningError: fewer than ``n0`` nodes, or no combination fits.
        """
        tolerance = max(0, min(self.fault_tolerance, len(node_ids) // self.min_nodes - 1))
        if self._counted is not None:
            try:
                return self._pin(self._count(self._counted, node_ids, tolerance))
            except ConfigError as error:
                logger.warning("%s; restarting with the planner's choice of pipelines instead", error)
        return self._pin(self._instantiate(node_ids, tolerance))

    def reconfigure(
        self, plan: Plan, lost_nodes: Sequence[int] = (), joined_nodes: Sequence[int] = ()
    ) -> Reconfiguration:
        """The new plan and layer copies after a membership change (see :func:`reconfigure`).

        Any number of simultaneous losses is reconfigured while a valid plan exists; spares take
        lost nodes' places first. After one loss the cost does not grow with the cluster: only the
        damaged pipelines are rebuilt, through an index the plan chain keeps
        (:mod:`oobleck.planning.index`), well under a millisecond at 16,384 nodes.

        With manual templates the new plan uses only the user's templates (:meth:`manual_note` says
        which, for the caller to log once the recovery is adopted; speculative re-plans stay silent);
        when none of their combinations fits the survivors, the error names the templates and the
        node count.
        The batch is re-split over the new pipelines (``microbatches`` pins apply to the initial
        plan only: the global batch is fixed). Manual ``count`` values are not re-imposed either:
        they pin the first plan's composition, and recovery keeps its usual rules (keep surviving
        nodes in place, move the least state), so the new plan's counts are whatever those give.

        Raises:
            ConfigError: an unknown or repeated node.
            ReconfigurationError: no valid plan exists on the remaining nodes.
        """
        try:
            change = reconfigure(
                plan,
                lost_nodes=lost_nodes,
                joined_nodes=joined_nodes,
                templates=self.templates,
                profile=self.profile,
                hardware=self.hardware,
            )
        except ReconfigurationError as error:
            if self.manual is None:
                raise
            members = len(plan.nodes) - len(set(lost_nodes)) + len(set(joined_nodes))
            raise ReconfigurationError(
                f"no plan of your pipeline templates ({self._labels()}) fits {members} nodes: {error}; "
                "add a template for fewer nodes to pipelines, or restart with more nodes"
            ) from error
        return change

    def predict_recovery(
        self,
        reconfiguration: Reconfiguration,
        constants: RecoveryConstants | None = None,
        steps: StepConstants | None = None,
    ) -> RecoveryPrediction:
        """Predicted seconds per recovery phase for ``reconfiguration`` on this hardware.

        ``steps`` prices the first step after the recovery (default: the plan's own step time).

        NOTE: the plan's group-creation rounds are memoised on its templates (:meth:`group_rounds`):
        counting groups walks every template and layer, and along a chain of reconfigurations the
        same templates come back.
        """
        plan = reconfiguration.plan
        return predict_recovery(
            plan,
            reconfiguration.transfers,
            self.hardware,
            constants,
            first_step_s=(steps or StepConstants()).step_s(plan, self.profile, self.hardware),
            group_rounds=self.group_rounds(plan),
        )

    def group_rounds(self, plan: Plan) -> int:
        """``plan_group_shape(plan, self.tied_pairs).rounds``, memoised on the templates in use.

        The groups are counted per (template, stage), and the pipeline counts matter only through
        which groups have more than one member (a group of one is not built), which is decided by
        whether each template runs one pipeline or more. So plans whose templates are the same,
        each running one or several pipelines, share one answer.
        """
        counts = plan.template_counts
        key = tuple((id(template), min(number, 2)) for template, number in counts)
        entry = self._rounds.get(key)
        if entry is not None and all(
            kept is template for kept, (template, _) in zip(entry[0], counts, strict=True)
        ):
            return entry[1]
        rounds = plan_group_shape(plan, self.tied_pairs).rounds
        if len(self._rounds) >= _ROUNDS_MEMO_SIZE:
            self._rounds.clear()
        # NOTE: the templates are kept with the answer, so a reused id never matches another template.
        self._rounds[key] = (tuple(template for template, _ in counts), rounds)
        return rounds

    def manual_note(self, plan: Plan) -> str | None:
        """One line naming the user's templates ``plan`` runs (for the recovery log), or None.

        Args:
            plan: A plan of this planner (e.g. a reconfiguration's).

        Returns:
            ``"recovery uses your pipeline templates: 3 nodes [0-1 | 2-3 | 4-5] on 3 nodes"``, or None
            when the templates were generated.
        """
        if self.manual is None:
            return None
        used = sorted({id(p.template): p.template for p in plan.pipelines}.values(), key=_nodes)
        names = ", ".join(template_label(template) for template in used)
        return f"recovery uses your pipeline templates: {names} on {len(plan.nodes)} nodes"

    def _labels(self) -> str:
        return "; ".join(template_label(template) for template in self.templates)

    def _pin(self, plan: Plan) -> Plan:
        """``plan`` with the manual templates' microbatch counts, when they add up to the batch."""
        if not self._pinned:
            return plan
        counts = [self._pinned[id(pipeline.template)] for pipeline in plan.pipelines]
        if sum(counts) != plan.global_microbatches:
            logger.warning(
                "pipelines: microbatches %s of the planned pipelines add up to %d, the global batch has %d "
                "microbatches; using the planner's split %s",
                counts,
                sum(counts),
                plan.global_microbatches,
                [pipeline.microbatches for pipeline in plan.pipelines],
            )
            return plan
        pipelines = tuple(
            dataclasses.replace(pipeline, microbatches=count)
            for pipeline, count in zip(plan.pipelines, counts, strict=True)
        )
        return Plan(
            pipelines=pipelines,
            global_microbatches=plan.global_microbatches,
            microbatch_size=plan.microbatch_size,
            fault_tolerance=plan.fault_tolerance,
            iteration_time_s=plan_iteration_time_s(pipelines, self.profile, self.hardware),
            spare_nodes=plan.spare_nodes,
        )

    def _count(
        self,
        counted: tuple[tuple[PipelineTemplate, ...], tuple[int, ...]],
        node_ids: Sequence[int],
        fault_tolerance: int,
    ) -> Plan:
        templates, counts = counted
        return counted_plan(
            templates,
            counts,
            node_ids,
            fault_tolerance=fault_tolerance,
            global_microbatches=self.global_microbatches,
            microbatch_size=self.microbatch_size,
            profile=self.profile,
            hardware=self.hardware,
        )

    def _instantiate(self, node_ids: Sequence[int], fault_tolerance: int) -> Plan:
        return instantiate(
            self.templates,
            node_ids,
            fault_tolerance=fault_tolerance,
            global_microbatches=self.global_microbatches,
            microbatch_size=self.microbatch_size,
            profile=self.profile,
            hardware=self.hardware,
        )


def _nodes(template: PipelineTemplate) -> int:
    return template.num_nodes
