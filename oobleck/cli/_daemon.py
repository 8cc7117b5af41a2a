"""What ``oobleck submit``, ``jobs`` and ``cancel`` share: the daemon's address and token flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oobleck.errors import ConfigError


def add_daemon_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--master``, ``--run-dir`` and ``--token-file``."""
    parser.add_argument("--master", help="HOST:PORT of the master (default: from <run-dir>/master.json)")
    parser.add_argument(
        "--run-dir", help="the daemon's run directory (master.json, and token when generated)"
    )
    parser.add_argument(
        "--token-file", help="0600 token file (default: $OOBLECK_TOKEN, else <run-dir>/token)"
    )


def daemon_address(args: argparse.Namespace) -> tuple[str, int]:
    """``--master HOST:PORT``, else the address in ``<run-dir>/master.json``.

    Raises:
        ConfigError: Neither is given, or they are malformed.
    """
    if args.master:
        host, sep, port = args.master.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--master {args.master!r}: expected HOST:PORT")
        return host, int(port)
    if not args.run_dir:
        raise ConfigError("give --master HOST:PORT or --run-dir of the daemon master")
    info = Path(args.run_dir) / "master.json"
    if not info.is_file():
        raise ConfigError(f"--run-dir {args.run_dir}: no master.json; is a master running there?")
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
        return str(data["address"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{info}: unreadable ({exc}); is a master running there?") from None


def daemon_token(args: argparse.Namespace) -> bytes:
    """The token from ``--token-file``, ``$OOBLECK_TOKEN`` or ``<run-dir>/token``.

    Raises:
        ConfigError: None of them holds a token.
    """
    from oobleck.runtime.control.token import load_token

    token_file = args.token_file
    if token_file is None and args.run_dir and (Path(args.run_dir) / "token").is_file():
        token_file = str(Path(args.run_dir) / "token")
    token = load_token(token_file)
    if token is None:
        raise ConfigError("no token: set OOBLECK_TOKEN, pass --token-file, or --run-dir of the daemon")
    return token
