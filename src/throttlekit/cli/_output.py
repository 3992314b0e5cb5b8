"""Table and JSON output shared by the admin commands."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .._errors import ConfigError

__all__ = ["TOKEN_ENV", "add_token_options", "plain", "print_json", "print_table", "seconds",
           "token_of"]

#: the environment variable the commands reading status endpoints take the token from
TOKEN_ENV = "THROTTLEKIT_TOKEN"
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                out: TextIO | None = None) -> None:
    """Left-aligned columns, a dashed rule under the headers."""
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def print_json(value: Any, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, sort_keys=False, default=str)
    (out or sys.stdout).write("\n")


def seconds(value: float | None) -> str:
    """A duration for humans: ``-`` for none, ``never`` for infinity."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    if value >= 86400:
        return f"{value / 86400:.1f}d"
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value:.1f}s"


def plain(text: str) -> str:
    """A docstring paragraph as ``--help`` shows it: Sphinx roles and literals as plain
    text (``:class:`~throttlekit.Limiter``` -> ``Limiter``, ````--x```` -> ``--x``)."""
    def role(m: re.Match[str]) -> str:
        return m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


def add_token_options(p: argparse.ArgumentParser) -> None:
    """``--token`` and ``--token-file`` of a command that reads status endpoints."""
    p.add_argument("--token", default=None,
                   help=f"the endpoints' bearer token (visible to other users in `ps`: "
                   f"prefer --token-file or ${TOKEN_ENV})")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help=f"read the token from FILE (its first line; default: ${TOKEN_ENV})")


def token_of(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token``, else ``--token-file``, else ``$THROTTLEKIT_TOKEN``;
    None when none is given. ConfigError for an unreadable or empty token file."""
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"--token-file {args.token_file}: {reason}") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None
