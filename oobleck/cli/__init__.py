"""The ``oobleck`` console script: one subcommand per module of this package, imported on demand.

Each subcommand module (``oobleck.cli.plan``, ``oobleck.cli.sim``, ...) exposes ``build_parser()`` and
``main(argv) -> int``; this dispatcher only picks the module by name, so ``oobleck plan`` never pays
for importing torch and a missing optional command fails with one line instead of an ImportError.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from oobleck import __version__
from oobleck.cli._common import EXIT_USAGE

#: Subcommand -> one-line summary, in the order ``oobleck --help`` lists them.
COMMANDS: dict[str, str] = {
    "plan": "show pipeline templates, a plan and a reconfiguration for a model and cluster",
    "sim": "simulate training with failures on a cluster of any size (SimPy)",
    "master": "run a training job on local, ssh or slurm nodes (or serve many jobs as a daemon)",
    "agent": "register this node with a master and run its workers (started by hand)",
    "submit": "submit a training job to a running daemon master",
    "jobs": "list the jobs of a daemon master",
    "cancel": "cancel a job of a daemon master",
    "status": "show a run's nodes, plan, step rate and last recoveries",
    "demo": "run a small real job, kill nodes and show the recovery live",
    "export": "write a run's newest checkpoint as a HuggingFace model folder",
    "data": "tokenize text into a token file (data prepare --tokenizer ... --input ... --output ...)",
}

_USAGE = "usage: oobleck [--version] <command> [flags] (oobleck <command> --help for its flags)"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [_USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, summary in COMMANDS.items()]
    lines += ["", "example:", "  oobleck plan --model gpt3-175b --hardware h100 --nodes 128 --fail 3"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``oobleck <command> [flags]`` to ``oobleck.cli.<command>.main``.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The subcommand's exit status; 0 for ``--help``/``--version``; 2 for a missing or unknown
        command, or one whose module is not installed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(_help())
        return EXIT_USAGE
    command, rest = args[0], args[1:]
    if command in ("-h", "--help"):
        sys.stdout.write(_help())
        return 0
    if command == "--version":
        sys.stdout.write(f"oobleck {__version__}\n")
        return 0
    if command not in COMMANDS:
        choices = ", ".join(COMMANDS)
        sys.stderr.write(f"oobleck: error: unknown command {command!r}; choose one of: {choices}\n")
        return EXIT_USAGE
    module_name = f"{__name__}.{command}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        sys.stderr.write(f"oobleck: error: command {command!r} is not available in this installation\n")
        return EXIT_USAGE
    return int(module.main(rest))


__all__ = ["COMMANDS", "main"]
