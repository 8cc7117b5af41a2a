"""Shared constants of the in-process control-plane tests (a real Master, real Agents)."""

from __future__ import annotations

TOKEN = b"0123456789abcdef0123456789abcdef"
"""The cluster token every test master and client uses."""
TINY_JOB = "model: tiny-gpt2\nglobal_batch: 4\nmicrobatch_size: 1\nsteps: 2\n"
"""A job small enough for any planner input; the workers these tests start never train it."""
