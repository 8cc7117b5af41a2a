"""Aborting a generation: only the sockets it created are cut; NCCL communicators abort, gloo's do not."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch.distributed as dist

from oobleck.runtime.control.nccl_env import NCCL_ENV_DEFAULTS, nccl_environment
from oobleck.runtime.control.sever import GroupSockets, abort_communicators, socket_inodes


@contextmanager
def _tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client, accepted server side)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=2.0)
        server, _ = listener.accept()
    server.settimeout(2.0)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def _alive(a: socket.socket, b: socket.socket) -> bool:
    a.sendall(b"ping")
    return b.recv(4) == b"ping"


def test_sever_cuts_the_generation_sockets_and_keeps_the_users():
    """A socket opened during the build is shut down (also mid-build); one opened before keeps working."""
    sockets = GroupSockets()
    with _tcp_pair() as (user, user_peer):
        with sockets.building(), _tcp_pair() as (group, group_peer):
            assert len(sockets.owned()) == 2  # both ends of the pair; the listener is closed
            # NOTE: an abort in the middle of a build (a notice during a rebuild) cuts them too.
            assert sockets.sever() == 2
            assert group_peer.recv(4) == b""  # the peer sees the connection closed
            with pytest.raises(OSError):
                group.sendall(b"x")
        assert _alive(user, user_peer) and _alive(user_peer, user)
        assert sockets.sever() == 0  # the build's sockets are closed now; nothing else is touched
        assert _alive(user, user_peer)


def test_sockets_recorded_after_the_build_are_cut_on_a_later_abort():
    """Sockets of a finished build stay recorded until an abort; sockets made after it never are."""
    sockets = GroupSockets()
    with _tcp_pair() as (a, b):
        with sockets.building():
            group = _tcp_pair()
            _, group_server = group.__enter__()
        with _tcp_pair() as (later, later_peer):
            assert sockets.sever() == 2
            assert group_server.recv(4) == b""
            assert _alive(later, later_peer) and _alive(a, b)
        group.__exit__(None, None, None)


def test_a_recorded_descriptor_reused_by_another_socket_is_not_cut():
    """The abort checks the recorded descriptors only: one that gloo closed and the process reused
    for a user's socket names another inode now, and that socket keeps working."""
    sockets = GroupSockets()
    with sockets.building():
        group = _tcp_pair()
        group_client, group_server = group.__enter__()
    recorded = {group_client.fileno(), group_server.fileno()}
    group.__exit__(None, None, None)
    with _tcp_pair() as (user, user_peer):
        assert recorded & {user.fileno(), user_peer.fileno()}  # NOTE: the lowest free numbers are reused.
        assert sockets.sever() == 0
        assert _alive(user, user_peer) and _alive(user_peer, user)


def test_socket_inodes_names_every_open_socket():
    """socket_inodes lists the inode of each socket this process holds."""
    with _tcp_pair() as (a, b):
        inodes = socket_inodes()
        assert os.fstat(a.fileno()).st_ino in inodes and os.fstat(b.fileno()).st_ino in inodes


def test_nccl_environment_sets_only_what_the_user_did_not():
    """Workers get async error handling 2 and non-blocking init unless the user chose otherwise."""
    assert nccl_environment({}) == NCCL_ENV_DEFAULTS
    assert NCCL_ENV_DEFAULTS["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"
    mine = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}
    assert nccl_environment(mine) == {"TORCH_NCCL_USE_COMM_NONBLOCKING": "1"}


def test_abort_communicators_dispatches_by_backend():
    """On gloo the world is left to the sever and destroy; the nccl path aborts every group (torch's API)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        dist.new_group([0])
        assert abort_communicators("gloo") is False
        assert dist.is_initialized()
        # NOTE: torch 2.13's _abort_process_group also accepts gloo groups, which lets this CPU
        # test drive the NCCL branch's call; ncclCommAbort itself is unproven here (no GPU).
        assert abort_communicators("nccl") is True
        assert not dist.is_initialized()
        assert abort_communicators("nccl") is False  # nothing left to abort; never raises
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
