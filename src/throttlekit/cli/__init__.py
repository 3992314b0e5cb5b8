"""The ``throttlekit`` command line (``throttlekit ...`` or ``python -m throttlekit ...``).

Subcommands are plugged in by module: each module named in :data:`COMMANDS` has a
``register(subparsers)`` function that adds its parser and sets ``func`` (called with the
parsed arguments; returns the exit status). Adding a command is one line here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._errors import ConfigError
from .._version import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

#: modules providing ``register(subparsers)``, in the order ``--help`` lists them
COMMANDS: list[str] = [
    "throttlekit.cli.simulate",
    "throttlekit.cli.rulesfile",
    "throttlekit.cli.admin",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of :data:`COMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="throttlekit",
        description="Rate limiting, blocklists and attack monitoring for WSGI and ASGI apps.",
    )
    parser.add_argument("--version", action="version", version=f"throttlekit {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status (0 success, 1 the command failed, 2 bad usage or configuration, 141 the reader of
    the output went away, as for a tool killed by SIGPIPE)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _pipe_closed()
    except ConfigError as exc:
        print(f"throttlekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"throttlekit {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


def _pipe_closed() -> int:
    """The reader went away (``throttlekit inspect KEY | head``): stop quietly, as Unix
    tools do, with the status a shell reports for SIGPIPE (128 + 13)."""
    try:
        # Python flushes stdout again at exit: point it at /dev/null so that flush neither
        # fails nor prints "Exception ignored ... BrokenPipeError"
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass
    return 141
