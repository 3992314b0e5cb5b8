"""``throttlekit check FILE`` and ``throttlekit rules FILE``: validate and show a rules file.

``check`` lists every error with its line and a hint, and exits 1 when there is any; on a
valid file it lists the callables the file imports by dotted path (a rules file runs code);
``rules`` prints the effective rule table in the order the limiter evaluates it.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import ConfigError
from .._rulesfile import RuleSet, RulesFileError, load_rules
from ._output import print_json, print_table

__all__ = ["register"]


def _load(args: argparse.Namespace) -> RuleSet:
    """Parse the file, then register it on a scratch limiter (what a real load does)."""
    from .._limiter import Limiter
    from .._reload import install

    ruleset = load_rules(args.file)
    settings: dict[str, Any] = dict(ruleset.limiter)
    if args.storage:
        settings["storage"] = args.storage
    try:
        limiter = Limiter(**settings)
    except ConfigError as exc:
        from .._rulesfile import RuleError

        raise RulesFileError(args.file, [RuleError(1, f"[limiter]: {exc}")]) from None
    install(limiter, ruleset)
    return ruleset


def run_check(args: argparse.Namespace) -> int:
    try:
        ruleset = _load(args)
    except RulesFileError as exc:
        if args.json:
            print_json({"file": args.file, "ok": False, "errors": [
                {"line": e.line, "message": e.message, "hint": e.hint} for e in exc.errors
            ]})
        else:
            print(exc)
        return 1
    n = len(ruleset.rules) + (ruleset.shedding is not None)
    imports = [{"line": line, "field": what, "callable": spec}
               for line, what, spec in ruleset.imports]
    if args.json:
        print_json({"file": args.file, "ok": True, "rules": n, "errors": [],
                    "imports": imports})
        return 0
    print(f"{args.file}: OK ({n} rule{'s' if n != 1 else ''})")
    if imports:
        print(f"{args.file}: imports and runs {len(imports)} callable"
              f"{'s' if len(imports) != 1 else ''} (a rules file is code: review these, and "
              "let only trusted users write the file):")
        for i in imports:
            print(f"{args.file}:{i['line']}: {i['field']} = {i['callable']!r}")
    return 0


def run_rules(args: argparse.Namespace) -> int:
    try:
        ruleset = _load(args)
    except RulesFileError as exc:
        print(exc)
        return 1
    rows = [
        (i, r.kind, r.name, r.match, r.key, r.limit, r.options, r.line)
        for i, r in enumerate(ruleset.ordered(), 1)
    ]
    if args.json:
        print_json([
            dict(zip(("order", "kind", "name", "match", "key", "limit", "options", "line"), row,
                     strict=True))
            for row in rows
        ])
    else:
        print_table(("#", "KIND", "NAME", "MATCH", "KEY", "LIMIT", "OPTIONS", "LINE"), rows)
    return 0


def register(subparsers: Any) -> None:
    """Add ``check`` and ``rules`` to the command line."""
    p = subparsers.add_parser(
        "check", help="validate a rules file; list every error",
        description="Validate a rules file the way the app loads it and list every error at "
        "once, each with its line and a hint; on a valid file, list the callables it "
        "imports (a rules file is code). Exit status 0 when valid, 1 with errors.")
    _file_options(p, "validate against this storage URL's capabilities (default: the "
                  "file's [limiter] storage, else memory://)", "print the result as JSON")
    p.set_defaults(func=run_check)
    p = subparsers.add_parser(
        "rules", help="print a rules file's rules in evaluation order",
        description="Print a rules file's rules in the order a request meets them "
        "(safelists, blocklists, bans, throttles, tracks): kind, name, match, key, limit, "
        "options and line.")
    _file_options(p, "storage URL to validate against", "print the table as JSON")
    p.set_defaults(func=run_rules)


def _file_options(p: Any, storage_help: str, json_help: str) -> None:
    """The rules file, ``--storage`` and ``--json``: what ``check`` and ``rules`` take."""
    p.add_argument("file", help="the TOML rules file")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--json", action="store_true", help=json_help)
