"""The ``sim`` command line: defaults run, outputs are written, bad input exits 2 with one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from oobleck.cli.sim import main

_SMALL = [
    "--nodes",
    "8",
    "--model",
    "gpt2",
    "--hardware",
    "cpu",
    "--hours",
    "2",
    "--global-batch",
    "32",
    "--quiet",
]


def test_small_run_prints_one_row_per_policy_and_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """A small run exits 0 and its table names every policy, the ratio column and the seed."""
    assert main([*_SMALL, "--fail-rate", "0.05", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    for name in ("oobleck", "checkpoint", "varuna", "bamboo", "vs oobleck", "seed 4"):
        assert name in out


def test_json_output_follows_the_documented_schema(tmp_path: Path) -> None:
    """--json writes config, per-policy results with the documented keys, and the timelines."""
    path = tmp_path / "out.json"
    assert main([*_SMALL, "--fail-rate", "0.1", "--repair-hours", "0.5", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert set(data) == {"config", "results", "timeline"}
    assert data["config"]["nodes"] == 8
    assert [row["policy"] for row in data["results"]] == ["oobleck", "checkpoint", "varuna", "bamboo"]
    for row in data["results"]:
        assert {
            "policy",
            "samples",
            "throughput_samples_per_s",
            "ettr",
            "failures",
            "recovery_s",
            "breakdown_s",
        } <= set(row)
        assert set(row["recovery_s"]) == {"p50", "p99"}
        assert sum(row["breakdown_s"].values()) == pytest.approx(2 * 3600.0)
    assert set(data["timeline"]["policies"]) == {"oobleck", "checkpoint", "varuna", "bamboo"}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """--plot writes a PNG file."""
    path = tmp_path / "plot.png"
    assert main([*_SMALL, "--fail-rate", "0.1", "--policy", "oobleck,varuna", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--fail-rate", "-1"], "--fail-rate must be a number >= 0"),
        (["--nodes", "0"], "--nodes must be a positive integer"),
        (["--hours", "0"], "--hours must be a number > 0"),
        (["--policy", "magic"], "--policy magic is unknown"),
        (["--repair-hours", "-2"], "--repair-hours must be a number > 0"),
        (["--global-batch", "33", "--microbatch-size", "2"], "--global-batch must be a positive multiple"),
        (["--model", "gpt9"], "unknown model 'gpt9'"),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_flag(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value exits 2 with one stderr line that names it, and no traceback."""
    assert main([*_SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("100,remove,node8\n", ":1: node8 is outside the cluster of 8 nodes"),
        ("0,add,node1\n100;remove;node1\n", ":2: '100;remove;node1' has 1 fields"),
    ],
)
def test_bad_trace_exits_2_naming_file_and_line(
    tmp_path: Path, text: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace naming a node outside the cluster, or a malformed line, exits 2 with path:line."""
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    assert main([*_SMALL, "--trace", str(trace)]) == 2
    assert f"{trace}{fragment}" in capsys.readouterr().err


def test_unknown_cost_key_exits_2_listing_valid_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --costs file with an unknown key exits 2 naming the key and the valid ones."""
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"restart_s": 60, "warp_speed": 9}))
    assert main([*_SMALL, "--costs", str(costs)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['warp_speed']" in err
    assert "restart_s" in err and "bamboo_failover_s" in err


def test_cost_overrides_change_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --costs file that makes restarts slower lowers checkpoint's samples for the same trace."""
    argv = [*_SMALL, "--fail-rate", "0.2", "--repair-hours", "0.2", "--policy", "checkpoint", "--seed", "2"]
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"restart_s": 900}))
    assert main([*argv, "--json", str(base)]) == 0
    assert main([*argv, "--costs", str(costs), "--json", str(slow)]) == 0
    samples = [json.loads(p.read_text())["results"][0]["samples"] for p in (base, slow)]
    assert samples[1] < samples[0]
    assert json.loads(slow.read_text())["config"]["costs"]["restart_s"] == 900


def test_json_costs_read_back_as_a_costs_file_step_constants_included(tmp_path: Path) -> None:
    """The costs a --json run reports, step constants and ``shared_cores: null`` included, read back."""
    argv = [*_SMALL, "--fail-rate", "0.2", "--seed", "2"]
    costs, first, second = tmp_path / "costs.json", tmp_path / "first.json", tmp_path / "second.json"
    costs.write_text(json.dumps({"compute_scale": 1.5, "step_overhead_s": 0.01}))
    assert main([*argv, "--costs", str(costs), "--json", str(first)]) == 0
    reported = json.loads(first.read_text())["config"]["costs"]
    assert (reported["compute_scale"], reported["shared_cores"]) == (1.5, None)
    costs.write_text(json.dumps(reported))
    assert main([*argv, "--costs", str(costs), "--json", str(second)]) == 0
    assert json.loads(second.read_text())["results"] == json.loads(first.read_text())["results"]


def test_readme_shows_the_default_runs_table_as_the_code_prints_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's table of ``python -m oobleck.sim --nodes 32 --fail-rate 0.01 --seeds 5`` is not stale."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert "python -m oobleck.sim --nodes 32 --fail-rate 0.01 --seeds 5 " in readme
    assert main(["--nodes", "32", "--fail-rate", "0.01", "--seeds", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    shown = readme.split("The default run above prints", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]
    shown_lines = shown.splitlines()
    # NOTE: the last line holds the wall time the simulation took: the one output the code does not decide.
    assert [line.rstrip() for line in shown_lines[:-1]] == [line.rstrip() for line in printed[:-1]]
    assert printed[-1].startswith("seeds 0..4; simulated in")
    assert "over 5 seeds" in shown and "expected 6.8" in shown


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [("--json", "is a directory"), ("--plot", "is a directory")],
)
def test_an_output_path_that_is_a_directory_exits_2_before_simulating(
    tmp_path: Path, flag: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json or --plot naming a directory exits 2 with one line, and nothing was simulated."""
    assert main([*_SMALL, flag, str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"{flag} {tmp_path}: {fragment}" in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""


def test_an_unwritable_output_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json under a file (not a folder) exits 2 naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*_SMALL, "--json", str(blocker / "out.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_nodes_above_the_documented_bound_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--nodes 10^12 exits 2 naming the bound instead of running out of memory."""
    assert main([*_SMALL, "--nodes", "1000000000000"]) == 2
    assert "--nodes must be at most 65,536" in capsys.readouterr().err


def test_an_empty_trace_is_an_error_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace file without events exits 2; with --allow-empty-trace it runs without failures."""
    trace = tmp_path / "empty.csv"
    trace.write_text("# nothing happens\n")
    assert main([*_SMALL, "--trace", str(trace)]) == 2
    assert "has no membership change; pass --allow-empty-trace" in capsys.readouterr().err
    assert main([*_SMALL, "--trace", str(trace), "--allow-empty-trace", "--policy", "oobleck"]) == 0


def test_seeds_print_mean_interval_and_failures_next_to_their_expectation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--seeds 3 prints a 95% interval per policy and each trace's failures next to the expectation."""
    assert main([*_SMALL, "--fail-rate", "0.2", "--seeds", "3", "--policy", "oobleck,varuna"]) == 0
    out = capsys.readouterr().out
    assert "mean ± 95% interval over 3 seeds" in out
    assert "node failures per trace:" in out and "(expected 2.6)" in out  # 8 (1 - e^-0.4)
    assert "±" in out.split("varuna", 1)[1].splitlines()[0]


def test_seeds_json_holds_every_seed_and_the_summary(tmp_path: Path) -> None:
    """--seeds 2 --json writes the per-seed results, each trace's failures and the mean with its interval."""
    path = tmp_path / "seeds.json"
    argv = [*_SMALL, "--fail-rate", "0.2", "--seeds", "2", "--policy", "oobleck,varuna", "--json", str(path)]
    assert main(argv) == 0
    data = json.loads(path.read_text())
    assert data["config"]["seeds"] == [0, 1]
    assert [run["seed"] for run in data["runs"]] == [0, 1]
    assert len(data["failures"]) == 2 and data["expected_failures"] == pytest.approx(8 * (1 - math.exp(-0.4)))
    varuna = data["summary"][1]
    assert varuna["policy"] == "varuna" and set(varuna["samples_per_s"]) == {"mean", "ci95"}
