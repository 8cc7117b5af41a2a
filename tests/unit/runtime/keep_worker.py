"""A test worker module (the agent's ``worker_module`` hook) that trains nothing and imports no torch.

It records what its agent gave it (``MASTER_PORT``: the job's store; ``--run-dir``: the job's run dir)
in ``<run_dir>/served.node<N>.local<R>.json``, reports ready, waits for its first generation over the
agent's socketpair, then exits 0: one job's life for a worker, in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from oobleck.runtime.control.protocol import Channel

WAIT_S = 10.0
"""Longest wait for the generation (the test fails rather than hangs)."""


def main() -> int:
    """Run one job's life; returns 0 once a generation arrived, 1 when none did."""
    run_dir = Path(sys.argv[sys.argv.index("--run-dir") + 1])
    node, local_rank = os.environ["OOBLECK_NODE"], os.environ["LOCAL_RANK"]
    record = {"store_port": int(os.environ["MASTER_PORT"]), "run_dir": str(run_dir), "pid": os.getpid()}
    (run_dir / f"served.node{node}.local{local_rank}.json").write_text(json.dumps(record))
    fd = int(os.environ["OOBLECK_CONTROL"].removeprefix("fd:"))
    channel = Channel(
        socket.socket(fileno=fd),
        bytes.fromhex(os.environ["OOBLECK_CONTROL_KEY"]),
        is_server=False,
        peer="agent",
    )
    channel.send({"type": "ready"})
    while True:
        try:
            message = channel.recv(WAIT_S)
        except (TimeoutError, OSError):
            return 1
        if message["type"] == "membership":
            return 0


if __name__ == "__main__":
    sys.exit(main())
