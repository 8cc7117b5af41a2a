"""A test hook: one node's step fails after its final all-reduce completed, before its update.

That is the failure a roll-forward exists for: a peer dies as the step's last all-reduce ends, so
some ranks complete the step and others see the all-reduce fail while holding its synchronised
gradients. Killing a process at that instant is a race a test cannot aim for; this hook makes the
survivors' side of it happen on purpose, while the test's real kill ends the generation.
"""

from __future__ import annotations

from dataclasses import dataclass

from oobleck.errors import ConfigError

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
