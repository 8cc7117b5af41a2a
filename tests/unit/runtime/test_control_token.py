"""Tests for token loading, generation and the routable-bind rule."""

from __future__ import annotations

import stat

import pytest

from oobleck.errors import ConfigError
from oobleck.runtime.control.server import check_bind, is_loopback
from oobleck.runtime.control.token import describe_source, generate_token_file, load_token, read_token_file


def test_generated_file_is_private_and_readable(tmp_path):
    """A generated token file has mode 0600 and reads back as the same token."""
    path = tmp_path / "token"
    token = generate_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token_file(path) == token
    assert len(token) == 64


def test_generate_refuses_to_overwrite(tmp_path):
    """An existing token file is never overwritten."""
    path = tmp_path / "token"
    generate_token_file(path)
    with pytest.raises(ConfigError, match="already exists"):
        generate_token_file(path)


def test_group_readable_file_is_refused(tmp_path):
    """A token file other users can read is refused, with the chmod fix in the message."""
    path = tmp_path / "token"
    path.write_text("a" * 32)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token_file(path)


def test_precedence_explicit_file_then_env(tmp_path):
    """An explicit file beats OOBLECK_TOKEN, which beats OOBLECK_TOKEN_FILE; none gives None."""
    path = tmp_path / "token"
    path.write_text("f" * 32)
    path.chmod(0o600)
    env = {"OOBLECK_TOKEN": "e" * 32, "OOBLECK_TOKEN_FILE": str(path)}
    assert load_token(path, env) == b"f" * 32
    assert load_token(None, env) == b"e" * 32
    assert load_token(None, {"OOBLECK_TOKEN_FILE": str(path)}) == b"f" * 32
    assert load_token(None, {}) is None
    assert "e" * 32 not in describe_source(None, env)


def test_short_token_refused():
    """A token under 16 bytes is refused."""
    with pytest.raises(ConfigError, match="at least"):
        load_token(None, {"OOBLECK_TOKEN": "short"})


def test_routable_bind_needs_supplied_token():
    """Loopback binds are always allowed; a routable bind needs a user-supplied token."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    check_bind("127.0.0.1", token_supplied=False)
    check_bind("0.0.0.0", token_supplied=True)
    with pytest.raises(ConfigError, match=r"--host 0\.0\.0\.0"):
        check_bind("0.0.0.0", token_supplied=False)
