"""The rendezvous store: bounded state, the authenticated service and its torch Store client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist

from oobleck.runtime.control import generation_sync
from oobleck.runtime.control.generation_sync import (
    BarrierTimeoutError,
    collect_states,
    planner_inputs,
    publish_state,
)
from oobleck.runtime.control.membership import Membership
from oobleck.runtime.control.protocol import AuthenticationError, connect
from oobleck.runtime.control.store import execute, start_store_service, store_key
from oobleck.runtime.control.store_client import StoreClient, StoreClosedError
from oobleck.runtime.control.store_records import (
    CLAIM_KEY,
    INPUTS_KEY,
    RecordError,
    claim_record,
    inputs_record,
    judge_claim,
    parse_inputs,
    parse_state,
    state_key,
    state_record,
)
from oobleck.runtime.control.store_state import StoreLimitError, StoreState

TOKEN = b"t" * 32


@pytest.fixture
def service():
    svc = start_store_service(TOKEN, "127.0.0.1")
    yield svc
    svc.close()


def client(svc, **kw) -> StoreClient:
    return StoreClient("127.0.0.1", svc.port, store_key(TOKEN), timeout=timedelta(seconds=2), **kw)


def test_store_key_is_a_derivation_not_the_token():
    """The store key differs from the token and is stable for one token."""
    assert store_key(TOKEN) != TOKEN and store_key(TOKEN) == store_key(TOKEN) and len(store_key(TOKEN)) == 32
    assert store_key(b"u" * 32) != store_key(TOKEN)


def test_state_follows_tcpstore_semantics():
    """add starts at 0, compare_set applies on an empty expectation only when unset, delete counts."""
    state = StoreState()
    assert state.add("n", 2) == 2 and state.add("n", 3) == 5 and state.get("n", 0) == b"5"
    assert state.compare_set("c", b"x", b"y") == b"x" and not state.check(["c"])
    assert state.compare_set("c", b"", b"a") == b"a"
    assert state.compare_set("c", b"", b"b") == b"a"
    assert state.compare_set("c", b"a", b"b") == b"b"
    assert state.num_keys() == 2 and state.delete("c") and not state.delete("c") and state.num_keys() == 1


def test_state_caps_sizes():
    """Values, key counts and total bytes beyond the caps are refused and leave the state unchanged."""
    state = StoreState(max_keys=2, max_value_bytes=8, max_total_bytes=12)
    with pytest.raises(StoreLimitError):
        state.set("k", b"x" * 9)
    state.set("a", b"1234")
    state.set("b", b"1234")
    with pytest.raises(StoreLimitError):
        state.set("c", b"1")
    with pytest.raises(StoreLimitError):
        state.set("a", b"12345678")  # NOTE: 1+8 + 1+4 = 14 bytes, over 12
    assert state.num_keys() == 2 and state.get("a", 0) == b"1234"


def test_state_wait_blocks_until_set_and_times_out():
    """get waits for a key another thread sets, and a missing key times out after its bound."""
    state = StoreState()
    threading.Timer(0.05, state.set, args=("k", b"v")).start()
    assert state.get("k", 2.0) == b"v"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        state.wait(["nope"], 0.1)
    assert 0.09 <= time.monotonic() - start < 1.0


def test_execute_rejects_malformed_requests():
    """A request with wrong field types gets a bad_request reply, never an exception."""
    state = StoreState()
    for request in (
        {"op": "set", "key": 1, "value": "eA=="},
        {"op": "set", "key": "k", "value": "not base64!"},
        {"op": "add", "key": "k", "amount": "1"},
        {"op": "wait", "keys": "k", "timeout_s": 1},
        {"op": "get", "key": "k", "timeout_s": -1},
        {"op": "drop_all"},
    ):
        assert execute(state, request)["error"] == "bad_request"
    assert state.num_keys() == 0


def test_client_round_trips_every_operation(service):
    """set/get/add/compare_set/wait/check/delete_key/num_keys behave over the wire as in the state."""
    store = client(service)
    store.set("a", b"\x00\xff")
    store.set("s", "text")
    assert store.get("a") == b"\x00\xff" and store.get("s") == b"text"
    assert store.add("n", 4) == 4 and store.add("n", -1) == 3
    assert store.compare_set("c", b"", b"mine") == b"mine"
    assert store.compare_set("c", b"", b"theirs") == b"mine"
    store.wait(["a", "n"])
    store.wait(["a"], timedelta(seconds=1))
    assert store.check(["a", "c"]) and not store.check(["zz"])
    assert store.delete_key("c") and not store.delete_key("c")
    assert store.num_keys() == 3
    store.close()


def test_client_get_times_out_with_a_store_error(service):
    """A missing key raises DistStoreError after the client's timeout, as TCPStore does."""
    store = StoreClient("127.0.0.1", service.port, store_key(TOKEN), timeout=timedelta(seconds=0.2))
    with pytest.raises(dist.DistStoreError, match="timeout"):
        store.get("never")
    with pytest.raises(dist.DistStoreError):
        store.wait(["never"], timedelta(seconds=0.1))
    store.close()


def test_prefix_store_over_the_client(service):
    """PrefixStore (what the engine wraps it in) forwards to the Python client."""
    store = client(service)
    prefixed = dist.PrefixStore("gen3", store)
    prefixed.set("x", b"1")
    assert store.get("gen3/x") == b"1" and prefixed.add("n", 2) == 2
    prefixed.wait(["x"])
    assert prefixed.check(["x"])
    store.close()


def test_wrong_key_and_job_token_are_refused(service):
    """The job token itself and a wrong key do not authenticate to the store service."""
    for key in (TOKEN, b"w" * 32):
        with pytest.raises(AuthenticationError):
            connect("127.0.0.1", service.port, key, "worker")


def test_raw_bytes_change_nothing(service):
    """A local process without the key that writes raw bytes is dropped and stores nothing."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=2) as sock:
        sock.sendall(b"\x00\x00\x00\x10" + b"A" * 200)
        sock.settimeout(2)
        with pytest.raises((ConnectionError, OSError)):
            while sock.recv(4096):
                pass
            raise ConnectionError("closed")
    assert service.state.num_keys() == 0


def test_abandon_fails_a_blocked_get_at_once(service):
    """abandon() from another thread ends a get blocked on a missing key within a fraction of a second."""
    store = StoreClient("127.0.0.1", service.port, store_key(TOKEN), timeout=timedelta(seconds=30))
    threading.Timer(0.1, store.abandon).start()
    start = time.monotonic()
    with pytest.raises(dist.DistStoreError):
        store.get("never")
    assert time.monotonic() - start < 2.0
    with pytest.raises(StoreClosedError):
        store.set("k", b"v")


def test_client_reconnects_to_a_service_restarted_on_the_same_port():
    """After the service closes and a new one binds the same port, the next operation succeeds."""
    svc = start_store_service(TOKEN, "127.0.0.1")
    port = svc.port
    store = StoreClient("127.0.0.1", port, store_key(TOKEN), timeout=timedelta(seconds=2), reconnect_s=5.0)
    store.set("before", b"1")
    svc.close()
    store._channel.close()  # NOTE: what the master's death does to the established connection.
    threading.Timer(0.3, lambda: holder.append(start_store_service(TOKEN, "127.0.0.1", port))).start()
    holder: list = []
    store.set("after", b"2")
    assert holder[0].state.check(["after"]) and not holder[0].state.check(["before"])
    store.close()
    holder[0].close()


def test_client_gives_up_on_a_server_that_stays_away():
    """With nothing listening, the client fails after its reconnect bound instead of hanging."""
    svc = start_store_service(TOKEN, "127.0.0.1")
    store = StoreClient(
        "127.0.0.1", svc.port, store_key(TOKEN), timeout=timedelta(seconds=1), reconnect_s=0.3
    )
    svc.close()
    store._channel.close()
    start = time.monotonic()
    with pytest.raises(StoreClosedError, match="unreachable"):
        store.set("k", b"v")
    assert time.monotonic() - start < 2.0


# ---------------------------------------------------------------------- records and the planner lease
def _state(**over):
    fields = {"generation": 3, "node": 2, "local_rank": 0, "plan": None, "step": 5, "last": None}
    fields.update(over)
    return state_record(**fields).encode()


def test_state_record_round_trips():
    """A record read back under its own key and generation is adopted as written."""
    last = {"step": 4, "lr": 0.1, "grad_norm": 1.5, "loss": 2.0}
    record = parse_state(_state(plan={"pipelines": []}, last=last), generation=3, node=2, local_rank=0)
    assert record["step"] == 5 and record["last"] == last and record["plan"] == {"pipelines": []}


@pytest.mark.parametrize(
    ("raw", "generation", "node", "match"),
    [
        (b"\xff\xfe", 3, 2, "not JSON"),
        (b'{"plan": null, "step": 5, "last": null}', 3, 2, "fields differ"),
        (_state(), 4, 2, "generation 3"),  # a stale record replayed into a newer generation
        (_state(), 3, 1, "node 2"),  # node 2's record copied under node 1's key
        (_state(step=-1), 3, 2, "step"),
        (_state(step=True), 3, 2, "step"),
        (_state(plan=[1]), 3, 2, "plan"),
        (_state(last={"step": 1, "lr": "x", "grad_norm": 1.0}), 3, 2, "last"),
    ],
)
def test_forged_or_stale_state_records_are_rejected(raw, generation, node, match):
    """Malformed, stale or misplaced records raise RecordError instead of being adopted."""
    with pytest.raises(RecordError, match=match):
        parse_state(raw, generation=generation, node=node, local_rank=0)


def test_claim_verdicts():
    """Own claims are mine, a live member's is held, a departed or garbled owner's is taken over."""
    claim = claim_record(0, 0, 0).encode()
    assert judge_claim(claim, 0, 0, [0, 1, 2]) == ("mine", 0)
    assert judge_claim(claim, 1, 0, [0, 1, 2]) == ("held", 0)
    assert judge_claim(claim, 0, 1, [0, 1, 2]) == ("held", 0)  # NOTE: another rank of the same node
    assert judge_claim(claim, 1, 0, [1, 2]) == ("take_over", 0)
    assert judge_claim(b"1", 1, 0, [1, 2]) == ("take_over", -1)  # NOTE: the old add()-counter claim
    assert judge_claim(b'{"node": "0", "local": 0}', 1, 0, [0, 1]) == ("take_over", -1)


def test_planner_inputs_are_validated():
    """Inputs from the future or with bad fields are rejected; good ones round-trip."""
    good = inputs_record({"layers": []}, 4, 0, 1).encode()
    assert parse_inputs(good, max_generation=1)["max_nodes"] == 4
    with pytest.raises(RecordError, match="generation"):
        parse_inputs(good, max_generation=0)
    with pytest.raises(RecordError, match="max_nodes"):
        parse_inputs(inputs_record({}, 0, 0, 0).encode(), max_generation=0)
    with pytest.raises(RecordError, match="fields"):
        parse_inputs(b'{"profile": {}, "max_nodes": 4}', max_generation=0)


# ---------------------------------------------------------------------- bounded generation rendezvous
def _record(generation: int, node: int, step: int = 0) -> str:
    return state_record(generation=generation, node=node, local_rank=0, plan=None, step=step, last=None)


def exchange_states(
    store: StoreClient, target: Membership, *, node: int, record: str, superseded: Callable[[], bool]
) -> list[dict[str, Any]] | None:
    """A worker's part of the state barrier: publish its record, then collect every member's."""
    publish_state(store, target.generation, node=node, local_rank=0, record=record)
    return collect_states(store, target, node=node, superseded=superseded)


def test_state_exchange_returns_every_members_record(service):
    """Members publishing concurrently each read all records, in member order."""
    target = Membership(2, (0, 1))
    results: dict[int, list] = {}

    def member(node: int) -> None:
        results[node] = exchange_states(
            client(service),
            target,
            node=node,
            record=_record(2, node, 7),
            superseded=lambda: False,
        )

    threads = [threading.Thread(target=member, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert [r["node"] for r in results[0]] == [0, 1] and results[0] == results[1]


def test_a_forged_record_is_rejected_and_its_node_named_missing(service, monkeypatch, caplog):
    """A stale record under node 1's key is never adopted: the bounded barrier names node 1 missing."""
    monkeypatch.setattr(generation_sync, "BARRIER_TIMEOUT_S", 0.3)
    store = client(service)
    store.set(state_key(3, 1, 0), _record(2, 1, 99))  # NOTE: generation 2's record replayed at 3
    with pytest.raises(BarrierTimeoutError) as raised:
        exchange_states(store, Membership(3, (0, 1)), node=0, record=_record(3, 0), superseded=lambda: False)
    assert raised.value.missing == [1]
    assert caplog.text.count("rejected store record") == 1


def test_a_superseded_barrier_returns_none(service):
    """A newer generation ends a barrier waiting for a member at once."""
    store = client(service)
    assert (
        exchange_states(store, Membership(1, (0, 1)), node=0, record=_record(1, 0), superseded=lambda: True)
        is None
    )


def test_a_claim_whose_owner_left_is_taken_over(service):
    """Node 0 claimed and died (not a member any more): node 1 takes over and publishes once."""
    store = client(service)
    store.set(CLAIM_KEY, claim_record(0, 0, 0))
    calls = []

    def publish() -> None:
        calls.append(1)
        store.set(INPUTS_KEY, inputs_record({"layers": []}, 2, 1, 1))

    inputs = planner_inputs(
        store, Membership(1, (1, 2)), node=1, local_rank=0, publish=publish, superseded=lambda: False
    )
    assert inputs is not None and inputs["node"] == 1 and calls == [1]
    assert json.loads(store.get(CLAIM_KEY))["node"] == 1


def test_a_live_owner_that_never_publishes_is_named_missing(service, monkeypatch):
    """If the claim's owner stays a member but publishes nothing, the wait ends naming that owner."""
    monkeypatch.setattr(generation_sync, "BARRIER_TIMEOUT_S", 0.3)
    store = client(service)
    store.set(CLAIM_KEY, claim_record(2, 0, 0))
    with pytest.raises(BarrierTimeoutError) as raised:
        planner_inputs(
            store, Membership(0, (1, 2)), node=1, local_rank=0, publish=lambda: None, superseded=lambda: False
        )
    assert raised.value.missing == [2]


def test_a_get_right_after_a_wait_costs_no_round_trip(service, monkeypatch):
    """gloo's wait-then-get of a peer address takes one request; any other request in between forgets it."""
    store, writer = client(service), client(service)
    requests: list[str] = []
    send = StoreClient._request

    def counted(self, op, wait_s=0.0, **fields):
        if self is store:
            requests.append(op)
        return send(self, op, wait_s, **fields)

    monkeypatch.setattr(StoreClient, "_request", counted)
    writer.set("addr/0", b"first")
    store.wait(["addr/0"])
    assert store.get("addr/0") == b"first" and requests == ["get_present"]
    store.wait(["addr/0"])
    writer.set("addr/0", b"second")
    assert store.check(["addr/0"])
    assert store.get("addr/0") == b"second" and requests[-2:] == ["check", "get"]
    assert store.get("addr/0") == b"second" and requests[-1] == "get"
    with pytest.raises(dist.DistStoreError, match="timeout"):
        store.wait(["never"], timedelta(seconds=0.1))
    store.close()
    writer.close()
