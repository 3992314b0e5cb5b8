"""The ``throttlekit`` command line (``throttlekit ...`` or ``python -m throttlekit ...``).

Subcommands are plugged in by module: each module named in :data:`COMMANDS` has a
``register(subparsers)`` function that adds its parser and sets ``func`` (called with the
parsed arguments; returns the exit status). Adding a command is one line here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Sequence

from .._compiled import COMPILED
from .._errors import ConfigError, StorageError
from .._version import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

#: modules providing ``register(subparsers)``, in the order ``--help`` lists them
COMMANDS: list[str] = [
    "throttlekit.cli.simulate",
    "throttlekit.cli.rulesfile",
    "throttlekit.cli.admin",
    "throttlekit.cli.incident",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of :data:`COMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="throttlekit",
        description="Rate limiting, blocklists and attack monitoring for WSGI and ASGI apps.",
    )
    parser.add_argument("--version", action="version", version=f"throttlekit {__version__} "
                        f"({'compiled core' if COMPILED else 'pure Python'})")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status (0 success, 1 the command failed: the store failed, the output could not be
    written; 2 bad usage or configuration, 141 the reader of the output went away, as for a
    tool killed by SIGPIPE). Environmental failures print one line on stderr, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    if sys.stdout is None:  # started with stdout closed (`throttlekit bans >&-`)
        _error(f"throttlekit {args.command}: standard output is closed")
        return 1
    try:
        status: int = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _pipe_closed()
    except ConfigError as exc:
        _error(f"throttlekit {args.command}: error: {exc}")
        return 2
    except StorageError as exc:
        where = _redact(getattr(args, "store_url", None) or getattr(args, "storage", None)
                        or "?")
        _error(f"throttlekit: the store at {where} failed: {exc}")
        return 1
    except OSError as exc:  # the output cannot be written (/dev/full, ...), a file, ...
        _drop_stdout()
        _error(f"throttlekit {args.command}: {exc.strerror or exc}"
               + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except KeyboardInterrupt:
        _error(f"throttlekit {args.command}: interrupted")
        return 130
    return status


def _error(message: str) -> None:
    """One line on stderr, if there is a stderr."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr)


def _redact(url: str) -> str:
    """A storage URL without its password (``redis://:secret@host`` -> ``redis://:***@host``)."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def _pipe_closed() -> int:
    """The reader went away (``throttlekit inspect KEY | head``): stop quietly, as Unix
    tools do, with the status a shell reports for SIGPIPE (128 + 13)."""
    _drop_stdout()
    return 141


def _drop_stdout() -> None:
    """Python flushes stdout again at exit: point it at /dev/null so that flush neither
    fails nor prints "Exception ignored ... BrokenPipeError" (or OSError: no space left)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor behind stdout
        pass
