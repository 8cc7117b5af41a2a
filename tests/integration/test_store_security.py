"""The rendezvous store is as private as the control channel: loopback only, authenticated, unforgeable.

Issue #10 item 2. A real master, agents and workers on localhost: while the job trains, nothing they
own listens beyond loopback (gloo's pair listeners included), and a local process without the token
can neither read nor write the store; the job completes with the losses of an undisturbed run.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from oobleck.runtime.control.protocol import AuthenticationError, connect
from oobleck.runtime.control.store import start_store_service, store_key
from oobleck.runtime.control.store_client import StoreClient
from tests.integration.harness import (
    agents,
    assert_ledger_exact,
    assert_losses_match,
    run_master,
    write_hosts,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = str(fd.readlink())
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _address(hex_addr: str) -> str:
    """Decode /proc/net/tcp's little-endian hex address (IPv4 or IPv6) to text."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listeners(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the given processes hold."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == _LISTEN and fields[9] in owner:
                addr, port = fields[1].split(":")
                found.append((owner[fields[9]], _address(addr), int(port, 16)))
    return found


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


def _gloo_rank(rank: int, port: int, key: bytes, out: multiprocessing.Queue) -> None:
    store = StoreClient("127.0.0.1", port, key, timeout=timedelta(seconds=60))
    prefixed = dist.PrefixStore("gen0", store)
    dist.init_process_group("gloo", store=prefixed, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    group = dist.new_group([0, 1])
    tensor = torch.full((3,), float(rank + 1))
    dist.all_reduce(tensor, group=group)
    dist.all_reduce(tensor)
    out.put((rank, tensor.tolist()))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gloo_initialises_through_the_python_store():
    """Two gloo processes init the default group and a new_group through PrefixStore over the client."""
    token = os.urandom(32)
    service = start_store_service(token, "127.0.0.1")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    ranks = [
        context.Process(target=_gloo_rank, args=(r, service.port, store_key(token), out)) for r in (0, 1)
    ]
    try:
        for process in ranks:
            process.start()
        results = sorted(out.get(timeout=90) for _ in ranks)
    finally:
        for process in ranks:
            process.join(30)
            if process.is_alive():
                process.kill()
        service.close()
    assert results == [(0, [6.0, 6.0, 6.0]), (1, [6.0, 6.0, 6.0])]
    assert service.state.num_keys() > 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("store_security")


@pytest.mark.timeout(400)
def test_default_run_listens_on_loopback_only_and_resists_forgery(folder, fault_free):
    """During a default run every listener of master, agents and workers is on loopback, and a local
    process without the token cannot use the store: the job's losses equal an undisturbed run's."""
    # NOTE: long enough that the job still runs while the three attacks (a few seconds) are made.
    hosts, job = write_hosts(folder, 2), write_job(folder, steps=80)
    reference = fault_free(write_job(folder, steps=80, f=0))
    seen: dict[str, object] = {}

    def attack(run_dir: Path) -> None:
        master = json.loads((run_dir / "master.json").read_text())
        pids = [master["pid"]] + [p for a in agents(run_dir) for p in [a["agent_pid"], *a["worker_pids"]]]
        seen["listeners"] = listeners(pids)
        host, port = master["address"], master["store_port"]
        # 1. torch's own unauthenticated client: the service never completes its handshake.
        with pytest.raises((RuntimeError, dist.DistStoreError)):
            dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=2), use_libuv=False)
        # 2. our protocol with a guessed key, and 3. raw garbage, are refused and close.
        with pytest.raises(AuthenticationError):
            connect(host, port, os.urandom(32), "worker")
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(json.dumps({"op": "set", "key": "ctl/gen1/state/1/0", "value": "x"}).encode() * 50)
        seen["attacked"] = True

    run = run_master(folder / "attacked", hosts, job, at_step=3, action=attack)
    assert run.rc == 0, run.master_log[-3000:]
    assert seen.get("attacked"), "the attack never ran"
    found = seen["listeners"]
    print(f"\nlisteners of master, agents and workers (pid, address, port): {found}")
    assert found, "no listener found: the /proc parsing is broken"
    assert all(_is_loopback(address) for _, address, _ in found), found
    assert_losses_match(run, reference)
    assert_ledger_exact(run, reference)
    assert "rejected connection" in run.master_log
