"""The shared secret of one job: where it comes from, how it is stored, and how it travels.

Assumptions:
- Every process of a job (master, agents, workers, ``submit``) runs as the same OS user, so a 0600
  file or an environment variable is private to the job (``/proc/<pid>/environ`` is readable only
  by that user; ``argv`` is readable by everyone, so a token never goes on a command line).
- A token is only as strong as its entropy: generated tokens are 32 random bytes.
- The token is never logged; only :func:`describe_source` (which says *where* it came from) is.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from oobleck.errors import ConfigError

TOKEN_ENV = "OOBLECK_TOKEN"
"""Environment variable holding the token itself (how agents and workers receive it)."""

TOKEN_FILE_ENV = "OOBLECK_TOKEN_FILE"
"""Environment variable naming a 0600 file that holds the token."""

MIN_TOKEN_BYTES = 16
"""Shortest token accepted: below 128 bits an HMAC key can be brute-forced offline."""


def _check_private(path: Path) -> None:
    """Refuse a token file that other users could read (the secret would not be secret)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token file {path}: mode {stat.S_IMODE(mode):04o} lets other users read it; "
            f"run `chmod 600 {path}`"
        )


def _validated(token: str, where: str) -> bytes:
    value = token.strip()
    if len(value.encode()) < MIN_TOKEN_BYTES:
        raise ConfigError(
            f"{where}: token is {len(value.encode())} bytes, need at least {MIN_TOKEN_BYTES}; "
            "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return value.encode()


def read_token_file(path: str | Path) -> bytes:
    """Read a token from a private file.

    Args:
        path: A file readable only by its owner (mode 0600 or stricter).

    Returns:
        The token bytes (surrounding whitespace stripped).

    Raises:
        ConfigError: The file is missing, readable by others, or holds a too-short token.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"token file {file}: does not exist; create it with mode 0600 or set {TOKEN_ENV}")
    _check_private(file)
    return _validated(file.read_text(encoding="utf-8"), f"token file {file}")


def load_token(token_file: str | Path | None = None, env: dict[str, str] | None = None) -> bytes | None:
    """Find the job's token: an explicit file, then ``OOBLECK_TOKEN``, then ``OOBLECK_TOKEN_FILE``.

    Explicit arguments beat the environment, following the project's config rule.

    Args:
        token_file: A path given on the command line (the path, never the token, is a flag).
        env: The environment to read (``os.environ`` when None); injectable for tests.

    Returns:
        The token, or None when no source is configured.

    Raises:
        ConfigError: A configured source is unusable (missing file, wrong mode, too short).
    """
    environ = os.environ if env is None else env
    if token_file is not None:
        return read_token_file(token_file)
    if environ.get(TOKEN_ENV):
        return _validated(environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if environ.get(TOKEN_FILE_ENV):
        return read_token_file(environ[TOKEN_FILE_ENV])
    return None


def generate_token_file(path: str | Path) -> bytes:
    """Create a fresh random token in a new 0600 file (one-shot local runs and daemons).

    The file is created with ``O_EXCL`` and mode 0600 in one system call, so there is no window in
    which it exists with looser permissions, and an existing file is never overwritten.

    Args:
        path: Where to write it; its directory must exist.

    Returns:
        The generated token bytes.

    Raises:
        ConfigError: The file already exists.
    """
    token = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"token file {path}: already exists; remove it or pass --token-file") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token.encode()


def describe_source(token_file: str | Path | None, env: dict[str, str] | None = None) -> str:
    """Say where the token came from, for the log line that must never contain the token itself.

    Args:
        token_file: The explicit file, if any.
        env: The environment to read (``os.environ`` when None).

    Returns:
        A short human-readable description such as ``"$OOBLECK_TOKEN"``.
    """
    environ = os.environ if env is None else env
    if token_file is not None:
        return f"file {token_file}"
    if environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    if environ.get(TOKEN_FILE_ENV):
        return f"file {environ[TOKEN_FILE_ENV]} (${TOKEN_FILE_ENV})"
    return "none"
