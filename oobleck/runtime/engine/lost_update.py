"""A test hook: one node's step fails after its final all-reduce completed, before its update.

That is the failure a roll-forward exists for: a peer dies as the step's last all-reduce ends, so
some ranks complete the step and others see the all-reduce fail while holding its synchronised
gradients. Killing a process at that instant is a race a test cannot aim for; this hook makes the
survivors' side of it happen on purpose, while the test's real kill ends the generation.

The hit rank holds (:func:`fail_when_aborted`) rather than failing at once: it plays the rank
whose all-reduce a dying peer broke, not the peer. Failing at once, it aborted its own world, so
the other ranks' next step failed within milliseconds, and a test had only that window to kill a
node after every other rank had completed the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from oobleck.errors import ConfigError
from oobleck.runtime.engine.comm import Comm, CommunicationError

_POLL_S = 0.01
"""How often a held rank checks its latch (a hook's hold: no reaction time is measured through it)."""

LOST_UPDATE_ENV = "OOBLECK_TEST_LOST_UPDATE"
"""``GENERATION:NODE``, e.g. ``1:4``: see :class:`LostUpdate`. Unset (the default): off."""


@dataclass(frozen=True)
class LostUpdate:
    """In generation ``generation``, node ``node``'s steps fail right after their final all-reduce."""

    generation: int
    node: int

    def hits(self, *, generation: int, node: int) -> bool:
        """Whether a step of ``node`` in ``generation`` must fail before its update."""
        return (generation, node) == (self.generation, self.node)


def parse_lost_update(text: str | None) -> LostUpdate | None:
    """Parse the value of :data:`LOST_UPDATE_ENV`.

    Args:
        text: The variable's value, or None when unset.

    Returns:
        The hook, or None for an unset or empty variable.

    Raises:
        ConfigError: The value is not ``GENERATION:NODE`` with a generation >= 0 and a node >= 0.
    """
    if not text:
        return None
    generation, _, node = text.partition(":")
    try:
        hook = LostUpdate(generation=int(generation), node=int(node))
    except ValueError:
        hook = None
    if hook is None or hook.generation < 0 or hook.node < 0:
        raise ConfigError(
            f"environment {LOST_UPDATE_ENV}={text!r}: expected GENERATION:NODE with both >= 0 "
            "(e.g. 1:4); unset it to turn the hook off"
        )
    return hook


def fail_when_aborted(comm: Comm, step: int) -> CommunicationError:
    """Hold this rank, its world intact, until an abort (a loss notice) latches; then its failure.

    Every other rank completes the step meanwhile and blocks in the next one on this rank, so a
    test can end the generation whenever it likes within ``comm.timeout``; after that the hold ends
    anyway (the peers' own waits time out then too).

    Args:
        comm: This rank's communication, whose latch the abort sets.
        step: The step that failed (named in the error).

    Returns:
        The error to raise: the step failed after its final all-reduce, before its update.
    """
    deadline = time.monotonic() + comm.timeout.total_seconds()
    while comm.error is None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return CommunicationError(f"{LOST_UPDATE_ENV}: step {step} failed after its final all-reduce")
