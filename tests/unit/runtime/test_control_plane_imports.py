"""The master, the agent and their command lines never load torch or transformers.

Only workers train: a master or agent that imported torch paid ~3 s of CPU and of start-up latency
for nothing (every test run starts one master and one agent per node, and a restarted master or a
rejoining agent is on the recovery path). The store is split for this reason: the master's
service (``control/store.py``) is torch-free, the workers' ``dist.Store`` client is not.
"""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "oobleck.runtime.master",
    "oobleck.runtime.agent",
    "oobleck.runtime.submit",
    "oobleck.cli",
    "oobleck.cli.master",
    "oobleck.runtime.control.master",
    "oobleck.runtime.control.agent",
    "oobleck.runtime.control.store",
)


def test_control_plane_modules_import_no_torch() -> None:
    """Importing every control-plane entry point loads neither torch nor transformers."""
    code = (
        "import sys, importlib\n"
        f"for module in {MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "    heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "    if heavy:\n"
        "        sys.exit(f'{module} imported {heavy}')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
