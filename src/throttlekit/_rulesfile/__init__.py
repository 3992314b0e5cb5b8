"""Rules from a TOML file: what operators review and change without touching code.

::

    [limiter]                      # optional: Limiter settings (from_file only)
    storage = "redis://127.0.0.1:6379/0"
    trusted_proxies = 1

    [[safelist]]
    name = "health"
    path = "/healthz"

    [[blocklist]]
    name = "bad-nets"
    ips = ["203.0.113.0/24", "2001:db8::/32"]

    [[fail2ban]]
    name = "scanners"
    path_prefix = ["/wp-admin", "/.env"]
    maxretry = 3
    findtime = "10m"
    bantime = "1h"

    [[throttle]]
    name = "login"
    rates = "5/minute"
    method = "POST"
    path = "/login"
    key = "form:username"
    strategy = "sliding_log"

Every table of one kind (``[[safelist]]``, ``[[blocklist]]``, ``[[fail2ban]]``,
``[[allow2ban]]``, ``[[throttle]]``, ``[[track]]``, ``[[concurrency]]``) is one rule, registered
as ``limiter.<kind>(...)`` would. Conditions (all given must hold): ``path`` (exact),
``path_prefix``, ``method``, ``ips`` (addresses and CIDRs), ``ips_from`` (a community
blocklist: a file or URL, see ``listsource.py``), ``header`` (a table: ``name`` and
one of ``equals``, ``contains``, ``prefix``, ``regex``, ``present``) and ``match`` (a dotted
import path to a function of the request view). Keys: ``"client"``, ``"ip"``, ``"global"``,
``"path"``, ``"user"``, ``"user_or_ip"``, ``"header:<name>"``, ``"form:<field>"`` or a dotted
import path.

:func:`load_rules` collects **every** error with its line number and a hint, and raises one
:class:`RulesFileError` listing them; nothing is registered from a file with an error.
See ``docs/rules-file.md``.

The package: ``lines.py`` finds where each table, key and array element is in the text;
``fields.py`` and ``conditions.py`` read one value each; ``schema.py`` says which kind takes
which fields; ``compile.py`` reads a document against the schema; ``model.py`` is the result.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import ConfigError
from .compile import Compiler
from .conditions import combine as _all  # noqa: F401 - re-exported
from .errors import RuleError, RulesFileError, did_you_mean
from .fields import MAX_SECONDS as MAX_SECONDS
from .fields import _Number as _Number
from .fields import import_path as import_path
from .fields import parse_duration as parse_duration
from .lines import Lines as _Lines  # noqa: F401 - re-exported
from .model import RuleSet
from .model import RuleSpec as RuleSpec
from .schema import KINDS as _KINDS
from .schema import LIMITER as _LIMITER

__all__ = ["RuleError", "RuleSet", "RulesFileError", "load_rules", "parse_rules"]

#: rule kinds in evaluation order (bans share one step, in file order)
KINDS = tuple(k.name for k in _KINDS)
#: Limiter settings a [limiter] table may hold (keyword arguments of Limiter)
LIMITER_FIELDS = tuple(_LIMITER)
_did_you_mean = did_you_mean


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10
        import tomli

        return tomli
    except ImportError:  # pragma: no cover
        raise ConfigError("reading rules files on Python 3.10 needs 'tomli': "
                          "pip install tomli") from None


def load_rules(path: str | os.PathLike[str], *, strategies: Sequence[str] | None = None
               ) -> RuleSet:
    """Read and validate a rules file.

    Raises:
        RulesFileError: the file has errors (all of them listed, each with its line).
        ConfigError: the file cannot be read.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {p!r}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesFileError(p, [RuleError(1, f"not UTF-8 text: {exc.reason}",
                                           "save the file as UTF-8")]) from None
    return parse_rules(text, p, strategies=strategies)


def parse_rules(text: str, path: str = "<rules>", *, strategies: Sequence[str] | None = None
                ) -> RuleSet:
    """Validate rules given as TOML text (see :func:`load_rules`)."""
    toml = _toml()
    try:
        data = toml.loads(text)
        return Compiler(text, path, strategies).parse(data)
    except RecursionError:  # tomllib and the parser recurse into nested arrays and tables
        raise RulesFileError(path, [RuleError(
            1, "arrays or tables nested too deeply", "a rules file needs a few levels at most",
        )]) from None
    except toml.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"line (\d+)", msg)
        line = int(m.group(1)) if m else 1
        raise RulesFileError(path, [RuleError(
            line, f"invalid TOML: {re.sub(r' [(]at line.*[)]$', '', msg)}",
            "check quotes, brackets and that each key = value is on its own line",
        )]) from None
