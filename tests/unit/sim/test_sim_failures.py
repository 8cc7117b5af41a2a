"""Failure models and trace replay: validation, determinism, and the shape of generated traces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from oobleck.errors import ConfigError
from oobleck.sim.failures import FailureModel, generate_trace, read_trace, write_trace


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_trace_replay_removes_exactly_the_named_nodes_at_the_named_times(tmp_path: Path) -> None:
    """A replayed trace yields one cluster event per timestamp with exactly the named nodes."""
    path = _write(
        tmp_path, "3600000,remove,node3\n3600000,remove,node5\n7200000,add,node3\n9000000,remove,node0\n"
    )
    trace = read_trace(path, num_nodes=8)
    assert trace.initial_nodes == tuple(range(8))
    assert [(e.time_s, e.lost, e.joined) for e in trace.events] == [
        (3600.0, (3, 5), ()),
        (7200.0, (), (3,)),
        (9000.0, (0,), ()),
    ]
    assert trace.num_failures == 3


def test_time_zero_adds_define_the_initial_membership(tmp_path: Path) -> None:
    """Published traces open with time-0 adds, and only those nodes are up at the start."""
    path = _write(tmp_path, "0,add,node1\n0,add,node2\n0,add,node3\n60000,remove,node2\n120000,add,node4\n")
    trace = read_trace(path, num_nodes=5)
    assert trace.initial_nodes == (1, 2, 3)
    assert [(e.time_s, e.lost, e.joined) for e in trace.events] == [(60.0, (2,), ()), (120.0, (), (4,))]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("100,remove,node9\n", ":1: node9 is outside the cluster of 4 nodes"),
        ("# header\n100,explode,node1\n", ":2: event 'explode'"),
        ("100,remove\n", ":1: '100,remove' has 2 fields"),
        ("abc,remove,node1\n", ":1: time 'abc' is not a number"),
        ("-5,remove,node1\n", ":1: time '-5' must be a finite number >= 0"),
        ("100,remove,gpu1\n", ":1: node 'gpu1' is not of the form node<k>"),
        ("100,remove,node1\n200,remove,node1\n", ":2: removes node1, which is not up"),
        ("100,add,node1\n", ":1: adds node1, which is already up"),
        ("200,remove,node1\n100,remove,node2\n", ":2: time 100 ms goes back in time"),
    ],
)
def test_malformed_or_invalid_trace_lines_name_file_and_line(
    tmp_path: Path, text: str, fragment: str
) -> None:
    """Every kind of bad trace line raises ConfigError naming path:line and the problem."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_trace(path, num_nodes=4)
    assert str(path) + fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_trace_file_is_a_config_error(tmp_path: Path) -> None:
    """A trace path that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read trace"):
        read_trace(tmp_path / "nope.csv", num_nodes=4)


def test_generated_trace_is_deterministic_for_a_seed() -> None:
    """Two draws with the same seed are equal; a different seed gives a different trace."""
    model = FailureModel(node_rate_per_hour=0.05, repair_hours=2.0, repair_distribution="exponential")
    first = generate_trace(model, 16, 48.0, random.Random(7))
    again = generate_trace(model, 16, 48.0, random.Random(7))
    other = generate_trace(model, 16, 48.0, random.Random(8))
    assert first == again
    assert first != other
    assert first.num_failures > 0


def test_without_repair_each_node_fails_at_most_once_and_never_rejoins() -> None:
    """With no repair model the trace only removes nodes, each at most once."""
    trace = generate_trace(FailureModel(node_rate_per_hour=0.2), 20, 24.0, random.Random(1))
    lost = [node for event in trace.events for node in event.lost]
    assert len(lost) == len(set(lost)) > 0
    assert all(not event.joined for event in trace.events)


def test_fixed_repair_brings_each_node_back_after_exactly_the_repair_time() -> None:
    """Every failed node rejoins exactly repair_hours later (when that is inside the horizon)."""
    trace = generate_trace(
        FailureModel(node_rate_per_hour=0.1, repair_hours=1.5), 10, 100.0, random.Random(3)
    )
    down: dict[int, float] = {}
    checked = 0
    for event in trace.events:
        for node in event.lost:
            down[node] = event.time_s
        for node in event.joined:
            assert event.time_s - down.pop(node) == pytest.approx(5400.0)
            checked += 1
    assert checked > 0


def test_rack_failure_takes_down_every_up_node_of_the_rack_at_once() -> None:
    """With only rack failures, every loss event is a subset of one rack of consecutive ids."""
    model = FailureModel(rack_size=4, rack_rate_per_hour=0.05, repair_hours=1.0)
    trace = generate_trace(model, 16, 200.0, random.Random(5))
    assert trace.events
    for event in trace.events:
        if event.lost:
            racks = {node // 4 for node in event.lost}
            assert len(racks) == 1
    assert any(len(event.lost) == 4 for event in trace.events)


def test_observed_failure_rate_matches_the_poisson_rate() -> None:
    """Over many node-hours the failure count is within 5% of rate x node-hours (with repair)."""
    trace = generate_trace(
        FailureModel(node_rate_per_hour=0.01, repair_hours=0.01), 200, 1000.0, random.Random(11)
    )
    expected = 0.01 * 200 * 1000.0
    assert abs(trace.num_failures - expected) < 0.05 * expected


def test_written_trace_reads_back_equal(tmp_path: Path) -> None:
    """write_trace produces the replay format and read_trace recovers the same trace."""
    trace = generate_trace(FailureModel(node_rate_per_hour=0.1, repair_hours=1.0), 8, 24.0, random.Random(2))
    path = tmp_path / "out.csv"
    write_trace(trace, path)
    again = read_trace(path, num_nodes=8)
    assert again.initial_nodes == trace.initial_nodes
    assert [(round(e.time_s, 3), e.lost, e.joined) for e in again.events] == [
        (round(e.time_s, 3), e.lost, e.joined) for e in trace.events
    ]


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"node_rate_per_hour": -0.1}, "--fail-rate"),
        ({"repair_hours": 0.0}, "--repair-hours"),
        ({"rack_size": -1}, "--rack-size"),
        ({"rack_rate_per_hour": float("nan")}, "--rack-fail-rate"),
    ],
)
def test_bad_failure_model_parameters_name_the_flag(kwargs: dict[str, float], flag: str) -> None:
    """Invalid rates or sizes raise ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=flag):
        FailureModel(**kwargs)
