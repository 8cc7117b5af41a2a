"""What every command-line entry point shares: one-line errors, exit codes, logging, help layout.

Assumptions:
    * A command module exposes ``build_parser()`` and ``main(argv) -> int`` and runs its body through
      :func:`run_command`, so every command reports a user's mistake the same way: one line
      ``oobleck <cmd>: error: <message>`` on stderr and exit status 2 (argparse's usage-error code),
      with a traceback only under ``--debug``.
    * Logging handlers are configured here and only here; library modules just log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from oobleck.errors import ConfigError, OobleckError

#: Exit status for bad input, as argparse and torchrun use it.
EXIT_USAGE = 2

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default once and keeps the line breaks of the description and example epilog."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # NOTE: a help text that already says its default ("default: $OOBLECK_TOKEN ...") would get a
        # second "(default: None)" from argparse; None/False defaults say nothing either.
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` and exit 2 (argparse's convention, without the usage block)."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see --help\n")


def new_parser(command: str, *, description: str, example: str) -> ArgumentParser:
    """Create the parser of ``oobleck <command>`` with the shared layout and the ``--debug`` flag.

    Args:
        command: subcommand name, used as ``prog`` (``"oobleck plan"``) and in error lines.
        description: what the command does, shown first in ``--help``.
        example: one or more example invocations, shown last in ``--help``.

    Returns:
        A parser to which the command adds its own flags.
    """
    parser = ArgumentParser(
        prog=f"oobleck {command}",
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log at DEBUG level and show the full traceback of an error instead of one line",
    )
    return parser


def configure_logging(*, debug: bool) -> None:
    """Send log records to stderr: warnings by default, everything under ``--debug``.

    Called once per entry point; does nothing to a root logger that already has handlers (a test
    runner's or an embedding application's).
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format=_LOG_FORMAT)


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``body`` and turn the outcome into an exit status.

    Args:
        parser: the command's parser (made by :func:`new_parser`, so it has ``--debug``).
        body: the command itself; returns its exit status.
        argv: arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        ``body``'s status; 2 for a usage error or an :class:`~oobleck.errors.OobleckError`;
        0 after ``--help``.

    Raises:
        OobleckError: only under ``--debug``, so the traceback shows where it came from.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # NOTE: argparse exits on --help (0) and usage errors (2); callers of main() want a status.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    configure_logging(debug=args.debug)
    try:
        return body(args)
    except OobleckError as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        return EXIT_USAGE


def at_least(flag: str, value: int, minimum: int) -> int:
    """Check that an integer flag is ``>= minimum`` (0 for counts, 1 for sizes).

    Args:
        flag: the flag as the user typed it, e.g. ``"--nodes"``.
        value: its parsed value.
        minimum: the smallest valid value.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is below ``minimum``.
    """
    if value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum}, got {value}")
    return value
