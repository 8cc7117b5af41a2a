"""`oobleck status --master`: the status request and reply are validated both ways over a real channel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oobleck.cli import main as oobleck_main
from oobleck.runtime.control.master import Master
from oobleck.runtime.control.protocol import Channel, connect
from oobleck.runtime.control.server import ControlServer
from oobleck.runtime.control.status_service import check_request, read_view
from oobleck.runtime.control.status_view import StatusError, StatusView, render
from tests.integration.harness import free_port
from tests.unit.runtime.control_setup import TOKEN

PLAN = {
    "generation": 1,
    "reason": "node(s) [1] lost",
    "members": [0],
    "pipelines": [{"nodes": [0], "microbatches": 4, "stages": [{"node": 0, "layers": [0, 1, 2, 3]}]}],
}
ROWS = [
    {"event": "membership", "generation": 1, "members": [0]},
    *[{"step": s, "generation": 1, "loss": 5.0 - s / 10, "samples": 4, "t": 10.0 + s} for s in range(4)],
    {"event": "recovery", "generation": 1, "lost": [1], "joined": [], "phases_s": {"detect": 1.5}},
]


def _job_files(job_dir: Path) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "plan.json").write_text(json.dumps(PLAN))
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))


def _token_file(tmp_path: Path, token: bytes) -> str:
    path = tmp_path / "token"
    path.write_bytes(token + b"\n")
    path.chmod(0o600)
    return str(path)


def _agent(master: Master) -> Channel:
    channel = connect("127.0.0.1", master.server.port, TOKEN, "agent")
    channel.send({"type": "register", "index": None, "slots": 1, "host": "h0", "pid": 41, "worker_pids": []})
    assert channel.recv(3)["type"] == "welcome"
    return channel


def test_view_round_trips_through_its_message(tmp_path: Path) -> None:
    """A view read from files survives to_message/from_message unchanged and renders the same text."""
    _job_files(tmp_path)
    view = read_view(tmp_path, 20)
    again = StatusView.from_message(json.loads(json.dumps(view.to_message())))
    assert again == view and render(again) == render(view)
    assert "plan     generation 1: 1 pipelines" in render(view) and "recovery gen 1: lost [1]" in render(view)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("nodes", 0, "alive"), "yes", "nodes[0].alive"),
        (("progress", "step"), "3", "progress.step"),
        (("progress", "loss"), True, "progress.loss"),
        (("plan", "pipelines", 0, "stages", 0, "layers"), ["a"], "plan.pipelines[0].stages[0].layers"),
        (("recoveries", 0, "phases_s"), [1.0], "recoveries[0].phases_s"),
        (("run_dir",), None, "run_dir"),
    ],
)
def test_tampered_reply_is_refused_naming_the_field(
    tmp_path: Path, path: tuple, value: object, named: str
) -> None:
    """A reply with one ill-typed field raises StatusError naming that field, never renders."""
    _job_files(tmp_path)
    message = read_view(tmp_path, 20, nodes=None).to_message()
    message["nodes"] = [{"node": 0, "host": "h", "alive": True, "agent_pid": 5}]
    target = message
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(StatusError, match=named.replace("[", r"\[").replace("]", r"\]")):
        StatusView.from_message(message)


def test_request_validation_refuses_other_types_and_extra_keys() -> None:
    """Only `{"type": "status"}` is a status request."""
    check_request({"type": "status"})
    with pytest.raises(StatusError, match="expected a 'status' request"):
        check_request({"type": "jobs"})
    with pytest.raises(StatusError, match="unknown request keys"):
        check_request({"type": "status", "evil": 1})


def test_status_master_shows_the_live_node_table(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --master` prints the master's nodes and the job dir's plan, as `status RUN_DIR` would."""
    agent = _agent(master)
    try:
        _job_files(master.job_dir)
        address = f"127.0.0.1:{master.server.port}"
        assert (
            oobleck_main(["status", "--master", address, "--token-file", _token_file(tmp_path, TOKEN)]) == 0
        )
        out = capsys.readouterr().out
        assert out == render(master.status_view())
        assert "nodes    1 alive of 1 registered" in out and "node 0: h0 alive agent pid 41" in out
        assert "job      idle (no job submitted yet)" in out  # NOTE: the master's own knowledge.
        assert "plan     generation 1: 1 pipelines" in out and "node 0: layers 0-3" in out
    finally:
        agent.close()


def test_wrong_token_is_refused_in_one_line(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client with another token gets exit 2 and one line saying the master refused the token."""
    address = f"127.0.0.1:{master.server.port}"
    code = oobleck_main(["status", "--master", address, "--token-file", _token_file(tmp_path, b"f" * 32)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{address} refused the token" in err, err


def test_unreachable_master_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening at HOST:PORT gives exit 2 and one line naming HOST:PORT."""
    address = f"127.0.0.1:{free_port()}"
    code = oobleck_main(["status", "--master", address, "--token-file", _token_file(tmp_path, TOKEN)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot reach the master at {address}" in err, err


def test_master_answers_a_malformed_request_with_an_error(master: Master) -> None:
    """A status connection whose request has unknown keys is answered with an error, not a view."""
    channel = connect("127.0.0.1", master.server.port, TOKEN, "status")
    try:
        channel.send({"type": "status", "evil": 1})
        reply = channel.recv(3)
    finally:
        channel.close()
    assert reply["type"] == "error" and "unknown request keys" in reply["message"]


def test_a_lying_master_is_refused_by_the_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that knows the token but sends an ill-typed view makes the client exit 2 naming the field."""

    def liar(channel: Channel, role: str) -> None:
        channel.recv(3)
        channel.send(
            {"type": "status", "status": {"run_dir": "x", "state": "running", "progress": {"step": "1"}}}
        )

    server = ControlServer(TOKEN, liar)
    try:
        address = f"127.0.0.1:{server.port}"
        code = oobleck_main(["status", "--master", address, "--token-file", _token_file(tmp_path, TOKEN)])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "invalid status" in err and "progress.step" in err, err
