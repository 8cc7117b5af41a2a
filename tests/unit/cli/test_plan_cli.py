"""Tests for `oobleck plan` / `python -m oobleck.plan` and the shared CLI conventions, run in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oobleck.cli import COMMANDS
from oobleck.cli import main as oobleck_main
from oobleck.cli.plan import build_parser, main, parse_node_ids
from oobleck.errors import ConfigError
from oobleck.planning.catalogue import analytic_profile
from oobleck.planning.hardware import get_hardware

SMALL = ["--model", "gpt2", "--hardware", "a100-80", "--nodes", "4", "--global-batch", "64"]
PHASES = {"detect", "plan", "rebuild_groups", "transfer_state", "first_step"}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(["--json", *argv]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("oobleck plan: error: ")
    return lines[0]


def test_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with templates, plan, n0 and guaranteed range in the documented shape."""
    report = _json(capsys, SMALL)
    n0 = report["min_nodes_per_pipeline"]
    assert report["guaranteed_range"] == [2 * n0, 4]
    assert report["templates"][0]["nodes"] == n0
    for template in report["templates"]:
        assert template["iteration_time_s"] > 0
        assert template["stages"][0]["layers"][0] == 0
        assert template["stages"][-1]["layers"][1] == 12 + 2
        for stage in template["stages"]:
            assert {"layers", "gpus", "memory_bytes"} <= stage.keys()
            assert stage["memory_bytes"] <= report["memory_limit_bytes"]
    plan = report["plan"]
    assert plan["iteration_time_s"] > 0 and plan["samples_per_s"] > 0
    assert plan["tokens_per_s"] == pytest.approx(plan["samples_per_s"] * 1024)
    assert sorted(node for p in plan["pipelines"] for node in p["nodes"]) == [0, 1, 2, 3]
    assert sum(p["microbatches"] for p in plan["pipelines"]) == 64
    assert len(plan["pipelines"]) >= 2
    assert "reconfigured" not in report


def test_fail_and_join_add_reconfiguration(capsys: pytest.CaptureFixture[str]) -> None:
    """--fail 1 --join 1 adds a reconfigured plan without node 1 but with node 4, transfers and phases."""
    report = _json(capsys, [*SMALL, "--fail", "1", "--join", "1"])
    assert report["lost_nodes"] == [1] and report["joined_nodes"] == [4]
    nodes = sorted(node for p in report["reconfigured"]["pipelines"] for node in p["nodes"])
    assert nodes == [0, 2, 3, 4]
    assert sum(p["microbatches"] for p in report["reconfigured"]["pipelines"]) == 64
    for transfer in report["transfers"]:
        assert {"layer", "src_node", "dst_node", "bytes"} == transfer.keys()
        assert transfer["src_node"] != 1
    assert report["predicted_recovery_s"].keys() >= PHASES
    assert all(seconds >= 0 for seconds in report["predicted_recovery_s"].values())


def test_same_flags_give_the_same_json(capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs with the same flags print identical JSON (the plan is deterministic)."""
    argv = [*SMALL, "--fail", "2"]
    assert _json(capsys, argv) == _json(capsys, argv)


def test_max_gpus_per_stage_caps_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    """--max-gpus-per-stage 1 yields templates whose stages each use a single GPU."""
    report = _json(capsys, [*SMALL, "--max-gpus-per-stage", "1"])
    assert {stage["gpus"] for t in report["templates"] for stage in t["stages"]} == {1}


def test_profile_json_is_accepted_as_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--model accepts a profile file and plans the model it describes."""
    path = tmp_path / "gpt2.json"
    analytic_profile("gpt2", get_hardware("a100-80")).save(path)
    report = _json(capsys, [*SMALL[2:], "--model", str(path)])
    assert report["model"] == "gpt2"


def test_tables_show_templates_plan_and_recovery(capsys: pytest.CaptureFixture[str]) -> None:
    """The default output is readable tables: templates, plan, throughput, reconfiguration, recovery."""
    assert main([*SMALL, "--fail", "0"]) == 0
    out = capsys.readouterr().out
    for text in ("Pipeline templates", "Plan", "samples/s", "tokens/s", "guaranteed", "Reconfigured plan"):
        assert text in out
    assert "transfer_state" in out and "State transfers" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'; choose one of: "),
        (["--hardware", "tpu"], "unknown hardware 'tpu'; choose one of: "),
        (["--global-batch", "65", "--microbatch-size", "2"], "--global-batch 65 is not divisible by"),
        (["--nodes", "-3"], "--nodes must be >= 1, got -3"),
        (["--join", "-1"], "--join must be >= 0, got -1"),
        (["--fault-tolerance", "-1"], "--fault-tolerance must be >= 0, got -1"),
        (["--fail", "9"], "--fail: node 9 is not in the cluster; node ids are 0..3"),
        (["--fail", "1,x"], "--fail: 'x' is not a node id"),
        (["--fail", "1,1"], "--fail: node 1 is listed twice"),
        (["--nodes", "abc"], "argument --nodes: invalid int value: 'abc'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    """Each kind of bad input exits 2 with one stderr line that names the problem."""
    assert expected in _error_line(capsys, [*SMALL, *argv])


def test_too_few_nodes_for_fault_tolerance(capsys: pytest.CaptureFixture[str]) -> None:
    """Fewer nodes than (f+1)*n0 exits 2 with the required count and both ways out."""
    line = _error_line(
        capsys, ["--model", "gpt3-175b", "--hardware", "h100", "--nodes", "8", "--fault-tolerance", "3"]
    )
    assert "fault_tolerance=3 needs >= (f+1)*n0 = " in line
    assert "got 8" in line and "lower --fault-tolerance or add nodes" in line


def test_debug_shows_the_exception() -> None:
    """Under --debug an input error propagates as the exception, for its traceback."""
    with pytest.raises(ConfigError, match="unknown model"):
        main(["--debug", "--model", "gpt5"])


def test_help_shows_defaults_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and shows every flag with its default and an example invocation."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--hardware", "--nodes", "--fault-tolerance", "--global-batch"):
        assert flag in out
    for flag in ("--microbatch-size", "--fail", "--join", "--json", "--max-gpus-per-stage", "--debug"):
        assert flag in out
    assert "(default: gpt3-175b)" in out
    assert "example:" in out and "python -m oobleck.plan" in out


def test_parser_defaults_are_the_documented_example() -> None:
    """The defaults plan gpt3-175b on 32 h100 nodes with f=1 and a 1024-sample batch."""
    args = build_parser().parse_args([])
    assert (args.model, args.hardware, args.nodes) == ("gpt3-175b", "h100", 32)
    assert (args.fault_tolerance, args.global_batch, args.microbatch_size) == (1, 1024, 1)
    assert (args.fail, args.join, args.json, args.max_gpus_per_stage) == ("", 0, False, None)


def test_parse_node_ids_sorts_and_ignores_blanks() -> None:
    """--fail ids are parsed, stripped and sorted; an empty string means no failures."""
    assert parse_node_ids(" 17, 3 ,", 32) == (3, 17)
    assert parse_node_ids("", 32) == ()


def test_oobleck_dispatches_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """`oobleck plan --json ...` runs the plan command and prints its JSON."""
    assert oobleck_main(["plan", "--json", *SMALL]) == 0
    assert "templates" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "status"), [(["frobnicate"], 2), ([], 2), (["--help"], 0), (["--version"], 0)]
)
def test_oobleck_top_level(capsys: pytest.CaptureFixture[str], argv: list[str], status: int) -> None:
    """The dispatcher rejects unknown or missing commands with 2 and answers --help/--version with 0."""
    assert oobleck_main(argv) == status
    captured = capsys.readouterr()
    if argv == ["frobnicate"]:
        # NOTE: other branches add commands (export, data, ...): the message lists COMMANDS in order.
        assert {"plan", "sim", "master", "agent", "submit", "status"} <= set(COMMANDS)
        assert captured.err.strip() == (
            f"oobleck: error: unknown command 'frobnicate'; choose one of: {', '.join(COMMANDS)}"
        )
    if argv == ["--help"]:
        assert "plan" in captured.out and "example:" in captured.out


def test_module_entry_point_exits_2_without_traceback() -> None:
    """`python -m oobleck.plan` with an unknown model exits 2 with one stderr line and no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "oobleck.plan", "--model", "gpt5"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("oobleck plan: error: unknown model 'gpt5'")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_losing_every_node_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Failing every node leaves no valid plan, which is reported as one line and exit 2."""
    assert "surviving" in _error_line(capsys, [*SMALL, "--fail", "0,1,2,3"])


def test_join_only_grows_onto_the_new_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    """--join 2 without failures reconfigures onto all six nodes and loses none."""
    report = _json(capsys, [*SMALL, "--join", "2"])
    assert report["lost_nodes"] == []
    nodes = sorted(node for p in report["reconfigured"]["pipelines"] for node in p["nodes"])
    assert nodes == [0, 1, 2, 3, 4, 5]


SPARE_CASE = ["--model", "gpt3-6.7b", "--hardware", "a100-40", "--global-batch", "512"]


@pytest.mark.parametrize("nodes", [600, 1024])
def test_more_nodes_than_the_batch_feeds_leave_spares(capsys: pytest.CaptureFixture[str], nodes: int) -> None:
    """600 or 1024 nodes with a batch of 512 plan 512 pipelines and list the rest as hot spares."""
    report = _json(capsys, [*SPARE_CASE, "--nodes", str(nodes)])
    plan = report["plan"]
    used = sorted(node for p in plan["pipelines"] for node in p["nodes"])
    assert sorted(used + plan["spare_nodes"]) == list(range(nodes))
    assert plan["spare_nodes"] == list(range(len(used), nodes))
    assert sum(p["microbatches"] for p in plan["pipelines"]) == 512


def test_tables_show_the_spares(capsys: pytest.CaptureFixture[str]) -> None:
    """The readable output names the spare nodes and why they are idle."""
    assert main([*SPARE_CASE, "--nodes", "600"]) == 0
    out = capsys.readouterr().out
    assert "Plan: 88 hot spare nodes (512-599) left idle" in out


def test_a_failure_absorbed_by_a_spare_in_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """--fail on a pipeline node of a plan with spares copies state to the lowest spare only."""
    report = _json(capsys, [*SPARE_CASE, "--nodes", "600", "--fail", "7"])
    assert {t["dst_node"] for t in report["transfers"]} == {512}
    assert report["reconfigured"]["spare_nodes"] == list(range(513, 600))
