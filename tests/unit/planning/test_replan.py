"""Tests for oobleck.planning.replan and index: the incremental re-plan equals the full one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.errors import ReconfigurationError
from oobleck.planning.batch import distribute_batch
from oobleck.planning.cost import plan_iteration_time_s
from oobleck.planning.hardware import get_hardware
from oobleck.planning.index import PlanIndex, take_index
from oobleck.planning.members import MemberChange
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage
from oobleck.planning.profile import LayerProfile, ModelProfile
from oobleck.planning.reconfigure import Reconfiguration, full_replan, reconfigure
from oobleck.planning.replan import incremental_replan
from oobleck.planning.rules import Shaper
from oobleck.planning.transfer import LayerBytes, plan_transfers

HARDWARE = get_hardware("cpu")
LAYERS = 12


def _profile() -> ModelProfile:
    """Twelve blocks; the first and last move more bytes, so copies come in two size classes."""
    layers = tuple(
        LayerProfile(
            name=f"block.{i}",
            kind="block",
            forward_s=0.01,
            backward_s=0.02,
            param_bytes=400 if 0 < i < LAYERS - 1 else 900,
            grad_bytes=400,
            optimizer_bytes=600,
            activation_bytes=10,
            output_bytes=10,
        )
        for i in range(LAYERS)
    )
    return ModelProfile(
        model="tiny", config_fingerprint="x", device="cpu", dtype="float32", microbatch_size=1, layers=layers
    )


PROFILE = _profile()


def template(num_nodes: int) -> PipelineTemplate:
    """One stage per node, layers split evenly, a per-size overhead so sizes differ in speed."""
    stages = tuple(
        Stage(
            first_layer=i * LAYERS // num_nodes,
            end_layer=(i + 1) * LAYERS // num_nodes,
            node=i,
            gpus=1,
            latency_s=0.03 * ((i + 1) * LAYERS // num_nodes - i * LAYERS // num_nodes) + 0.001 * num_nodes,
            memory_bytes=0,
        )
        for i in range(num_nodes)
    )
    return PipelineTemplate(num_nodes=num_nodes, gpus_per_node=1, stages=stages)


TEMPLATES = [template(n) for n in range(2, 9)]
BY_SIZE = {t.num_nodes: t for t in TEMPLATES}


def plan_of(sizes: list[int], spares: int, fault_tolerance: int, extra: int) -> Plan:
    """Pipelines of the given sizes on consecutive node ids, then ``spares`` idle nodes."""
    chosen = [BY_SIZE[size] for size in sizes]
    total = sum(t.num_stages for t in chosen) + extra
    counts = distribute_batch(chosen, total)
    pipelines, start = [], 0
    for t, count in zip(chosen, counts, strict=True):
        pipelines.append(
            Pipeline(template=t, nodes=tuple(range(start, start + t.num_nodes)), microbatches=count)
        )
        start += t.num_nodes
    return Plan(
        pipelines=tuple(pipelines),
        global_microbatches=total,
        microbatch_size=1,
        fault_tolerance=fault_tolerance,
        iteration_time_s=plan_iteration_time_s(pipelines, PROFILE, HARDWARE),
        spare_nodes=tuple(range(start, start + spares)),
    )


def reference(plan: Plan, lost: list[int], joined: list[int]) -> Reconfiguration | str:
    """The full re-plan (every pipeline walked), or the error it raises."""
    try:
        new = full_replan(plan, sorted(lost), sorted(joined), BY_SIZE, PROFILE, HARDWARE)
        transfers = plan_transfers(plan, new, set(lost), LayerBytes.of(PROFILE))
    except ReconfigurationError:
        return "no valid plan"
    return Reconfiguration(
        plan=new, transfers=transfers, lost_nodes=tuple(sorted(lost)), joined_nodes=tuple(sorted(joined))
    )


def incremental(plan: Plan, lost: list[int], joined: list[int]) -> Reconfiguration | str:
    try:
        return reconfigure(
            plan,
            lost_nodes=lost,
            joined_nodes=joined,
            templates=TEMPLATES,
            profile=PROFILE,
            hardware=HARDWARE,
        )
    except ReconfigurationError:
        return "no valid plan"


def same(left: Reconfiguration | str, right: Reconfiguration | str) -> None:
    if isinstance(left, str) or isinstance(right, str):
        assert left == right
        return
    assert left.plan == right.plan
    assert left.plan.nodes == right.plan.nodes
    assert left.plan.iteration_time_s == right.plan.iteration_time_s
    assert left.plan.to_dict() == right.plan.to_dict()
    assert left.transfers == right.transfers


sizes = st.lists(st.integers(2, 8), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(
    sizes=sizes,
    spares=st.integers(0, 3),
    fault_tolerance=st.integers(0, 3),
    extra=st.integers(0, 60),
    data=st.data(),
)
def test_incremental_replan_equals_the_full_one_along_a_chain(
    sizes: list[int], spares: int, fault_tolerance: int, extra: int, data: st.DataObject
) -> None:
    """Plans and copies equal the full re-plan's, for any losses and joins, along a chain and back."""
    first = plan_of(sizes, spares, fault_tolerance, extra)
    plans = [first]
    next_id = 1000
    for _ in range(3):
        current = plans[data.draw(st.integers(0, len(plans) - 1))]
        members = list(current.nodes)
        lost = data.draw(st.lists(st.sampled_from(members), max_size=min(4, len(members)), unique=True))
        joined = list(range(next_id, next_id + data.draw(st.integers(0, 3))))
        next_id += 10
        expected = reference(current, lost, joined)
        got = incremental(current, lost, joined)
        same(got, expected)
        if not isinstance(got, str):
            plans.append(got.plan)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(2, 8), min_size=4, max_size=12), extra=st.integers(0, 60), data=st.data())
def test_one_loss_is_answered_incrementally(sizes: list[int], extra: int, data: st.DataObject) -> None:
    """A single loss in a plan with more than f + 1 pipelines never needs the full re-plan."""
    plan = plan_of(sizes, 0, 1, extra)
    victim = data.draw(st.sampled_from(plan.nodes))
    index = take_index(plan)
    try:
        shaper = Shaper(BY_SIZE, 2, 8, LayerBytes.of(PROFILE), index.old_range)
        result = incremental_replan(plan, index, [victim], [], BY_SIZE, PROFILE, HARDWARE, shaper)
    finally:
        index.lock.release()
    assert result is not None


def test_index_places_every_node() -> None:
    """The index maps each node to its pipeline position, template index, stages and layer range."""
    plan = plan_of([3, 2, 4], 1, 1, 5)
    index = PlanIndex(plan)
    for position, pipeline in enumerate(plan.pipelines):
        for slot, node in enumerate(pipeline.nodes):
            place = index.place(node)
            assert place is not None
            assert (place.pipeline, place.index) == (position, slot)
            stages = [s for s, stage in enumerate(pipeline.template.stages) if stage.node == slot]
            assert list(place.stages) == stages
            assert place.layers == pipeline.template.layout.node_ranges[slot]
    assert index.place(plan.spare_nodes[0]) is None


def test_a_chain_of_re_plans_never_builds_a_member_list() -> None:
    """Re-planning re-planned plans copies no list of every member; the lists, read later, are right."""
    plan = plan_of([3, 3, 4, 4, 3], 0, 1, 20)
    chain = [plan]
    for victim, newcomer in ((0, 100), (7, 101), (12, 102)):
        step = incremental(chain[-1], [victim], [newcomer])
        assert not isinstance(step, str)
        chain.append(step.plan)
    for derived in chain[1:]:
        pending = derived._nodes
        assert isinstance(pending, MemberChange)
        assert pending.members is None
    expected = sorted({*plan.nodes} - {0, 7, 12} | {100, 101, 102})
    assert list(chain[-1].nodes) == expected
    assert chain[-1].nodes == tuple(sorted(n for p in chain[-1].pipelines for n in p.nodes))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 8), min_size=2, max_size=8), spares=st.integers(0, 3), data=st.data())
def test_member_lists_of_an_unread_chain_are_its_pipelines_and_spares(
    sizes: list[int], spares: int, data: st.DataObject
) -> None:
    """Along a chain whose member lists nobody read, each list, read at the end, is exactly its plan's."""
    chain = [plan_of(sizes, spares, 1, 30)]
    for step in range(4):
        current = chain[-1]
        members = sorted([n for p in current.pipelines for n in p.nodes] + list(current.spare_nodes))
        lost = data.draw(st.lists(st.sampled_from(members), max_size=2, unique=True))
        got = incremental(current, lost, [500 + step] if data.draw(st.booleans()) else [])
        if isinstance(got, str):
            break
        chain.append(got.plan)
    for plan in reversed(chain):
        expected = tuple(sorted([n for p in plan.pipelines for n in p.nodes] + list(plan.spare_nodes)))
        assert plan.nodes == expected
