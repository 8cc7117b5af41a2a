"""Tests for what a resumed master reads back from the run dir, and for the agent message checks."""

from __future__ import annotations

import json

import pytest

from oobleck.cli import master as master_cli
from oobleck.runtime.control.master_files import last_membership, read_job, write_job
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.membership_events import Regroup, WorkerExit
from oobleck.runtime.control.messages import MessageError, parse_agent_message, parse_register


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def test_last_membership_is_the_newest_announced_one(tmp_path):
    """The newest master membership line wins; worker lines and a line cut by the crash are ignored."""
    gen0, gen1 = Membership(0, (0, 1, 2)), Membership(1, (0, 1), lost=(2,))
    (tmp_path / "metrics.jsonl").write_text(
        _line({"event": "membership", "source": "master", **gen0.to_message()})
        + _line({"step": 3, "loss": 1.0})
        + _line({"event": "membership", "source": "master", **gen1.to_message()})
        + '{"event": "membership", "source": "master", "generation": 2, "memb'
    )
    assert last_membership(tmp_path) == gen1


def test_finished_job_has_nothing_to_adopt(tmp_path):
    """After a job outcome line there is no running generation to adopt."""
    (tmp_path / "metrics.jsonl").write_text(
        _line({"event": "membership", "source": "master", **Membership(0, (0,)).to_message()})
        + _line({"event": "job_completed", "source": "master", "t": 1.0})
    )
    assert last_membership(tmp_path) is None


def test_job_round_trip(tmp_path):
    """The job a resumed master continues is the one written at submit."""
    write_job(tmp_path, {"type": "job", "config_text": "x"}, 4)
    assert read_job(tmp_path) == ({"type": "job", "config_text": "x"}, 4)
    assert read_job(tmp_path / "nothing") == (None, 0)


def test_resume_without_master_json_exits_2(tmp_path, capsys):
    """`--resume` on a folder that never held a master exits 2 with one line naming master.json."""
    assert master_cli.main(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no master.json" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "register", "slots": "abc"}, "slots='abc' is not an integer"),
        ({"type": "register", "slots": 0}, "slots=0 must be >= 1"),
        ({"type": "register", "index": True}, "index=True is not an integer"),
        ({"type": "register", "resume": {"membership": {"generation": 1}}}, "malformed membership"),
        ({"type": "hello"}, "expected 'register'"),
    ],
)
def test_bad_register_fields_are_message_errors(message, text):
    """Each ill-typed register field is a MessageError naming the field and value."""
    with pytest.raises(MessageError, match=text.replace("(", r"\(").replace("[", r"\[")):
        parse_register(message, conn=1)


def test_agent_messages_become_events():
    """Well-formed messages become events carrying the sender's registered node id, never the message's."""
    assert parse_agent_message(3, {"type": "regroup", "generation": 2, "missing": [1], "node": 9}) == Regroup(
        3, 2, (1,)
    )
    assert parse_agent_message(3, {"type": "worker_exit", "code": -9}) == WorkerExit(3, -9, 0)
    with pytest.raises(MessageError, match="missing"):
        parse_agent_message(3, {"type": "regroup", "generation": 2, "missing": "1"})
    with pytest.raises(MessageError, match="unexpected message type"):
        parse_agent_message(3, {"type": "store"})
