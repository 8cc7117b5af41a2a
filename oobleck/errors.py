"""Typed errors: the boundary between a user's mistake (exit code 2) and a bug (traceback).

Every error raised for bad user input derives from :class:`OobleckError`; command-line entry
points catch it, print its one-line message to stderr and exit with status 2, the usage-error
convention of argparse and torchrun.
"""

from __future__ import annotations


class OobleckError(Exception):
    """Base class for errors caused by user input or by an unrecoverable cluster state."""


class ConfigError(OobleckError, ValueError):
    """A config, profile, hostfile, trace or flag is malformed; the message names where and why."""


class PlanningError(OobleckError):
    """No valid plan exists for the request (too few nodes, model does not fit, ...)."""


class ReconfigurationError(PlanningError):
    """The surviving nodes cannot form a valid plan; the caller falls back to a checkpoint."""
