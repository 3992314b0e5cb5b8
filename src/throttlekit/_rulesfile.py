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
``path_prefix``, ``method``, ``ips`` (addresses and CIDRs), ``header`` (a table: ``name`` and
one of ``equals``, ``contains``, ``prefix``, ``regex``, ``present``) and ``match`` (a dotted
import path to a function of the request view). Keys: ``"client"``, ``"ip"``, ``"global"``,
``"path"``, ``"header:<name>"``, ``"form:<field>"`` or a dotted import path.

:func:`load_rules` collects **every** error with its line number and a hint, and raises one
:class:`RulesFileError` listing them; nothing is registered from a file with an error.
See ``docs/rules-file.md``.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._algorithms import ALGORITHMS, DEFAULT_STRATEGY, MAX_LIMIT, make_algorithm
from ._errors import ConfigError
from ._ipset import IPSet
from ._rates import MAX_PERIOD, coerce_rates
from ._redos import MAX_REGEX_INPUT, hazard
from ._rules import ON_UNREADABLE

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._request import RequestView

__all__ = ["RuleError", "RuleSet", "RulesFileError", "load_rules", "parse_rules"]

#: rule kinds in evaluation order (bans share one step, in file order)
KINDS = ("safelist", "blocklist", "fail2ban", "allow2ban", "throttle", "track", "concurrency")
_CONDITIONS = ("path", "path_prefix", "method", "ips", "header", "match")
_FIELDS: dict[str, tuple[str, ...]] = {
    "safelist": ("name", *_CONDITIONS),
    "blocklist": ("name", *_CONDITIONS),
    "fail2ban": ("name", *_CONDITIONS, "key", "maxretry", "findtime", "bantime"),
    "allow2ban": ("name", *_CONDITIONS, "key", "maxretry", "findtime", "bantime"),
    "throttle": ("name", *_CONDITIONS, "rates", "key", "strategy", "cost", "burst", "dry_run",
                 "count_when", "on_unreadable"),
    "track": ("name", *_CONDITIONS, "key"),
    "concurrency": ("name", *_CONDITIONS, "limit", "key", "timeout", "retry_after"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "fail2ban": ("maxretry", "findtime", "bantime"),
    "allow2ban": ("maxretry", "findtime", "bantime"),
    "throttle": ("rates",),
    "concurrency": ("limit",),
}
#: Limiter settings a [limiter] table may hold (keyword arguments of Limiter)
LIMITER_FIELDS = (
    "storage", "strategy", "burst", "on_storage_error", "retry_interval", "error_log_interval",
    "denial_cache_size", "trusted_proxies", "ipv6_prefix", "header_style", "headers_on_allowed",
)
_SHEDDING_FIELDS = ("capacity", "priority", "thresholds", "timeout", "retry_after")
_TOP = ("version", "limiter", "shedding", *KINDS)
_KEY_NAMES = ("client", "ip", "global", "path")
_KEY_HINT = ("one of 'client', 'ip', 'global', 'path', 'header:<name>', 'form:<field>', "
             "or a dotted import path 'package.module:function'")
_HEADER_OPS = ("equals", "contains", "prefix", "regex", "present")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_HINT = ('write "<count>/<period>" like "100/minute", "5/10 seconds", "1000 per day"; '
              'join several with ";"')
_STATUS_CLASS = re.compile(r"^[1-5]xx$")


# -- numbers -------------------------------------------------------------------------------

#: The longest duration a rules file may give (findtime, bantime, rate periods): ten years,
#: the bound the API enforces too (see ``_rates.MAX_PERIOD``).
MAX_SECONDS = MAX_PERIOD
_MIN_SECONDS = 0.001
_MIN_RATE_PERIOD = 1.0  # rate strings count in seconds at least ("10/second")
_LEASE_SECONDS = 10 * 86400.0  # concurrency and shedding leases: under ten days
_MAX_HOPS = 64  # X-Forwarded-For entries the client-IP resolution walks at most


@dataclass(frozen=True)
class _Number:
    """What one numeric field accepts. Every number of a rules file goes through
    :meth:`coerce`, so none reaches the limiter as a bool, inf, nan or out of range."""

    minimum: float
    maximum: float
    integer: bool = False  # a TOML integer, not a float
    duration: bool = False  # seconds, or a string with a unit ("10m")
    below: bool = False  # the maximum itself is out of range

    def coerce(self, v: Any) -> Any:
        """``v`` as an int (integer fields) or a float (others).

        Raises:
            ConfigError: what is wrong, without the field's name.
        """
        value: float | None = None
        if isinstance(v, bool):
            pass
        elif isinstance(v, int) or (isinstance(v, float) and not self.integer):
            value = v
        elif isinstance(v, str) and self.duration:
            m = _DURATION.match(v)
            if m:
                value = float(m.group(1)) * _UNITS[m.group(2)]
        if value is None:
            raise ConfigError(f"must be {self.describe()}, got {_type(v)} {v!r}")
        if not math.isfinite(value) or value < self.minimum or value > self.maximum or (
            self.below and value >= self.maximum
        ):
            raise ConfigError(f"must be {self.describe()}, got {v!r}")
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        if self.integer:
            return f"a whole number from {self.minimum:g} to {int(self.maximum)}"
        if not self.duration:
            return f"a number from {self.minimum:g} to {self.maximum:g}"
        low = "0" if self.minimum == 0 else f"{self.minimum * 1000:g}ms"
        high = f"{self.maximum / 86400:g} days"
        return f"a duration from {low} to {'under ' if self.below else ''}{high}"

    def hint(self) -> str:
        if self.integer:
            return f"write a whole number from {self.minimum:g} to {int(self.maximum)} " \
                   "without quotes"
        if self.duration:
            return ('seconds as a number (600), or a string with a unit: "500ms", "30s", '
                    '"10m", "1h", "1d"')
        return f"a number from {self.minimum:g} to {self.maximum:g}"


_COUNT = _Number(1, MAX_LIMIT, integer=True)  # maxretry, burst, limit, capacity
_COST = _Number(0, MAX_LIMIT, integer=True)
_SIZE = _Number(0, MAX_LIMIT, integer=True)  # denial_cache_size
_DURATION_N = _Number(_MIN_SECONDS, MAX_SECONDS, duration=True)  # findtime, bantime, --ttl
_LEASE = _Number(_MIN_SECONDS, _LEASE_SECONDS, duration=True, below=True)
_INTERVAL = _Number(0, MAX_SECONDS, duration=True)  # retry_interval, error_log_interval
_HOPS = _Number(0, _MAX_HOPS, integer=True)
_PREFIX = _Number(1, 128, integer=True)
#: numeric [limiter] settings
_LIMITER_NUMBERS = {"burst": _COUNT, "retry_interval": _INTERVAL,
                    "error_log_interval": _INTERVAL, "denial_cache_size": _SIZE,
                    "ipv6_prefix": _PREFIX}


# -- errors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleError:
    """One problem in a rules file: where, what, and how to fix it."""

    line: int
    message: str
    hint: str = ""

    def format(self, path: str) -> str:
        text = f"{path}:{self.line}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class RulesFileError(ConfigError):
    """A rules file with errors; ``errors`` lists every one (sorted by line)."""

    def __init__(self, path: str, errors: Sequence[RuleError]) -> None:
        self.path = path
        self.errors = sorted(errors, key=lambda e: e.line)
        n = len(self.errors)
        head = f"{path}: {n} error{'s' if n != 1 else ''} in rules file"
        super().__init__("\n".join([head, *(e.format(path) for e in self.errors)]))


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


# -- line numbers --------------------------------------------------------------------------

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-.\"]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*(?:\"([^\"]*)\"|([A-Za-z0-9_\-]+))\s*[.=]")
_KEY_START = re.compile(r"(?:\"([^\"]*)\"|([A-Za-z0-9_\-]+))\s*[.=]")


class _Lines:
    """Where each table, each of its keys and each element of an array value starts in the
    source (tomllib does not say)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        self.elements: dict[tuple[str, int, str], list[int]] = {}
        counts: dict[str, int] = {}
        current: tuple[str, int] = ("", 0)
        in_multiline = False
        lines = text.splitlines()
        skip_to = 0
        for n, line in enumerate(lines, 1):
            if n <= skip_to:
                continue
            if in_multiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = False
                continue
            m = _ARRAY_HEADER.match(line)
            if m:
                kind = m.group(1)
                i = counts.get(kind, 0)
                counts[kind] = i + 1
                current = (kind, i)
                self.tables[current] = n
                continue
            m = _TABLE_HEADER.match(line)
            if m:
                current = (m.group(1).strip('"'), 0)
                self.tables.setdefault(current, n)
                continue
            m = _KEY_LINE.match(line)
            if m:
                name = m.group(1) if m.group(1) is not None else m.group(2)
                self.keys.setdefault((current[0], current[1], name), n)
                eq = line.find("=", m.end() - 1)
                rest = line[eq + 1:] if eq >= 0 else ""
                if rest.lstrip().startswith("["):
                    col = eq + 1 + len(rest) - len(rest.lstrip())
                    # a root-level `throttle = [{...}, {...}]`: each inline table is a rule
                    root = name if current == ("", 0) else None
                    skip_to, elems = self._array(lines, n, col, root)
                    self.elements.setdefault((current[0], current[1], name), elems)
                    continue
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = True

    def _array(self, lines: list[str], start: int, col: int, root: str | None
               ) -> tuple[int, list[int]]:
        """Scan the array opening at ``lines[start - 1][col]``: the line of each element,
        and the line where it closes (inline tables of ``root``: their keys too)."""
        elems: list[int] = []
        stack: list[str] = []
        quote: str | None = None
        expect = expect_key = False
        ln, c = start, col
        while ln <= len(lines):
            s = lines[ln - 1]
            while c < len(s):
                ch = s[c]
                if quote is not None:
                    if len(quote) == 3:
                        if s.startswith(quote, c):
                            quote = None
                            c += 3
                            continue
                    elif ch == "\\" and quote == '"':
                        c += 2
                        continue
                    elif ch == quote:
                        quote = None
                    c += 1
                    continue
                if ch == "#":
                    break
                if ch in " \t":
                    c += 1
                    continue
                if expect and len(stack) == 1 and ch not in "],":
                    elems.append(ln)
                    expect = False
                    if root is not None:
                        self.tables.setdefault((root, len(elems) - 1), ln)
                if expect_key and len(stack) == 2 and ch not in "},":
                    expect_key = False
                    m = _KEY_START.match(s, c)
                    if m and root is not None and elems:
                        key = m.group(1) if m.group(1) is not None else m.group(2)
                        self.keys.setdefault((root, len(elems) - 1, key), ln)
                if s.startswith('"""', c) or s.startswith("'''", c):
                    quote = s[c:c + 3]
                    c += 3
                    continue
                if ch in "\"'":
                    quote = ch
                elif ch in "[{":
                    stack.append(ch)
                    if len(stack) == 1:
                        expect = True
                    elif len(stack) == 2 and ch == "{":
                        expect_key = True
                elif ch in "]}":
                    if stack:
                        stack.pop()
                    if not stack:
                        return ln, elems
                elif ch == ",":
                    if len(stack) == 1:
                        expect = True
                    elif len(stack) == 2 and stack[-1] == "{":
                        expect_key = True
                c += 1
            ln += 1
            c = 0
        return ln, elems

    def table(self, kind: str, i: int = 0) -> int:
        return self.tables.get((kind, i), 1)

    def key(self, kind: str, i: int, name: str) -> int:
        return self.keys.get((kind, i, name), self.table(kind, i))

    def element(self, kind: str, i: int, name: str, j: int) -> int:
        """The line of element ``j`` of the array ``name`` (else of the key)."""
        elems = self.elements.get((kind, i, name), [])
        return elems[j] if j < len(elems) else self.key(kind, i, name)


# -- the parsed rule set -------------------------------------------------------------------


@dataclass
class RuleSpec:
    """One rule of a file, validated: how to register it, and how to show it."""

    kind: str
    name: str
    line: int
    kwargs: dict[str, Any]
    #: human-readable columns for ``throttlekit rules``
    match: str = "*"
    key: str = "-"
    limit: str = "-"
    options: str = ""


@dataclass
class RuleSet:
    """The validated content of a rules file."""

    path: str
    rules: list[RuleSpec] = field(default_factory=list)
    limiter: dict[str, Any] = field(default_factory=dict)
    shedding: RuleSpec | None = None
    #: every callable the file imports by dotted path: (line, field, path). A rules file
    #: runs code: ``throttlekit check`` lists these for review.
    imports: list[tuple[int, str, str]] = field(default_factory=list)

    def ordered(self) -> list[RuleSpec]:
        """The rules in the order the limiter evaluates them."""
        rank = {"safelist": 0, "blocklist": 1, "fail2ban": 2, "allow2ban": 2, "throttle": 3,
                "track": 4, "concurrency": 5}
        out = sorted(self.rules, key=lambda r: rank[r.kind])  # stable: file order within
        if self.shedding is not None:
            out.append(self.shedding)
        return out

    def names(self) -> set[str]:
        return {r.name for r in self.rules}

    def register(self, rules: Any, concurrency: Any) -> None:
        """Register every rule on a ``Rules`` engine and a ``ConcurrencyRules`` registry.

        Raises:
            RulesFileError: the registration refused rules (e.g. a strategy the storage
                cannot run, a name a rule in code already has), each with its line.
        """
        errors: list[RuleError] = []
        for spec in self.rules:
            try:
                _register(spec, rules, concurrency)
            except ConfigError as exc:
                errors.append(RuleError(spec.line, f"[[{spec.kind}]] {spec.name!r}: {exc}",
                                        _registration_hint(exc)))
        if self.shedding is not None:
            try:
                concurrency.set_shedding(**self.shedding.kwargs)
            except ConfigError as exc:
                errors.append(RuleError(self.shedding.line, f"[shedding]: {exc}",
                                        _registration_hint(exc)))
        if errors:
            raise RulesFileError(self.path, errors)


def _registration_hint(exc: ConfigError) -> str:
    text = str(exc)
    if "duplicate rule name" in text:
        return "a rule registered in code has this name; rename one of them"
    if "not available" in text:
        return "this storage backend cannot run that strategy; pick another"
    return ""


def _register(spec: RuleSpec, rules: Any, concurrency: Any) -> None:
    kw = spec.kwargs
    kind = spec.kind
    if kind in ("safelist", "blocklist"):
        rules.add_list(kind, spec.name, kw.get("predicate"), kw.get("ips"))
    elif kind in ("fail2ban", "allow2ban"):
        rules.add_ban(kind, spec.name, kw["match"], kw["maxretry"], kw["findtime"],
                      kw["bantime"], kw.get("key"))
    elif kind == "throttle":
        rules.add_throttle(spec.name, kw["rates"], kw.get("match"), kw.get("key"),
                           kw.get("strategy"), kw.get("cost"), kw.get("burst"),
                           kw.get("dry_run", False), kw.get("count_when"),
                           kw.get("on_unreadable", "client"))
    elif kind == "track":
        rules.add_track(spec.name, kw.get("match"), kw.get("key"))
    else:
        if spec.name in rules.names:
            raise ConfigError(f"duplicate rule name {spec.name!r} "
                              f"(already a {rules.names[spec.name]})")
        concurrency.add(spec.name, kw["limit"], key=kw.get("key"), match=kw.get("match"),
                        timeout=kw.get("timeout"), retry_after=kw.get("retry_after"))


# -- loading -------------------------------------------------------------------------------


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
        return _Parser(text, path, strategies).parse(data)
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


class _Parser:
    def __init__(self, text: str, path: str, strategies: Sequence[str] | None) -> None:
        self.lines = _Lines(text)
        self.path = path
        self.errors: list[RuleError] = []
        self.strategies = tuple(strategies) if strategies is not None else tuple(ALGORITHMS)
        self.default_strategy = DEFAULT_STRATEGY
        self.names: dict[str, int] = {}
        self.imports: list[tuple[int, str, str]] = []

    def err(self, line: int, message: str, hint: str = "") -> None:
        self.errors.append(RuleError(line, message, hint))

    def parse(self, data: Mapping[str, Any]) -> RuleSet:
        out = RuleSet(self.path)
        for top in data:
            if top not in _TOP:
                line = self.lines.tables.get((top, 0)) or self.lines.key("", 0, top)
                self.err(line, f"unknown section {top!r}",
                         _did_you_mean(top, _TOP) or f"sections are: {', '.join(_TOP)}")
        version = data.get("version", 1)
        if isinstance(version, bool) or version != 1:
            self.err(self.lines.key("", 0, "version"), f"unsupported version {version!r}",
                     "this throttlekit reads version = 1")
        if "limiter" in data:
            out.limiter = self._limiter(data["limiter"])
        for kind in KINDS:
            tables = data.get(kind)
            if tables is None:
                continue
            if not isinstance(tables, list):
                self.err(self.lines.table(kind), f"{kind} must be written [[{kind}]] "
                         "(an array of tables), one per rule", f"write [[{kind}]], not [{kind}]")
                continue
            for i, table in enumerate(tables):
                spec = self._rule(kind, i, table)
                if spec is not None:
                    out.rules.append(spec)
        if "shedding" in data:
            out.shedding = self._shedding(data["shedding"])
        if self.errors:
            raise RulesFileError(self.path, self.errors)
        out.imports = sorted(self.imports)
        return out

    # -- sections --------------------------------------------------------------------------

    def _limiter(self, table: Any) -> dict[str, Any]:
        line = self.lines.table("limiter")
        if not isinstance(table, dict):
            self.err(line, "limiter must be a table", "write [limiter] followed by settings")
            return {}
        out: dict[str, Any] = {}
        for k, v in table.items():
            kl = self.lines.key("limiter", 0, k)
            if k not in LIMITER_FIELDS:
                self.err(kl, f"unknown setting {k!r} in [limiter]",
                         _did_you_mean(k, LIMITER_FIELDS)
                         or f"settings are: {', '.join(LIMITER_FIELDS)}")
                continue
            if k == "strategy" and self._strategy(v, kl, "[limiter]"):
                self.default_strategy = v
            if k in _LIMITER_NUMBERS:
                v = self._number(v, kl, f"[limiter]: {k}", _LIMITER_NUMBERS[k])
            elif k == "trusted_proxies":
                v = self._trusted_proxies(v, kl)
            out[k] = v
        return out

    def _trusted_proxies(self, v: Any, line: int) -> Any:
        what = "[limiter]: trusted_proxies"
        if not isinstance(v, list):
            return self._number(v, line, what, _HOPS)
        for j, e in enumerate(v):
            at = self.lines.element("limiter", 0, "trusted_proxies", j)
            if e == "unix":
                continue
            try:
                if not isinstance(e, str):
                    raise ConfigError(f"not a string: {_type(e)}")
                IPSet([e])
            except ConfigError as exc:
                self.err(at, f"{what}: bad address or CIDR {e!r}: "
                         f"{str(exc).split(': ', 1)[-1]}",
                         'a hop count (trusted_proxies = 1), or the proxies\' addresses and '
                         'networks: ["10.0.0.0/8", "unix"]')
                return None
        return v

    def _strategy(self, v: Any, line: int, where: str) -> bool:
        if isinstance(v, str) and v in ALGORITHMS and v not in self.strategies:
            self.err(line, f"{where}: strategy {v!r} is not available on this storage",
                     f"this storage runs: {', '.join(self.strategies)}")
            return False
        if not isinstance(v, str) or v not in self.strategies:
            shown = v if isinstance(v, str) else repr(v)
            mean = _did_you_mean(str(v), self.strategies) if isinstance(v, str) else ""
            self.err(line, f"{where}: unknown strategy {shown!r}",
                     (mean + " " if mean else "") + f"strategies: {', '.join(self.strategies)}")
            return False
        return True

    def _rule(self, kind: str, i: int, table: Any) -> RuleSpec | None:
        tline = self.lines.table(kind, i)
        if not isinstance(table, dict):
            self.err(tline, f"[[{kind}]] #{i + 1} must be a table")
            return None
        name = table.get("name")
        label = f"[[{kind}]] {name!r}" if isinstance(name, str) and name else f"[[{kind}]] #{i+1}"
        n_errors = len(self.errors)

        def line(k: str) -> int:
            return self.lines.key(kind, i, k)

        if not isinstance(name, str) or not name:
            self.err(line("name") if "name" in table else tline,
                     f"{label}: name must be a non-empty string",
                     'every rule needs a unique name = "..." (it shows in logs and headers)')
            name = ""
        elif name in self.names:
            self.err(line("name"), f"{label}: duplicate rule name {name!r} "
                     f"(first used on line {self.names[name]})",
                     "rule names must be unique across all kinds; rename one of them")
        else:
            self.names[name] = line("name")
        fields = _FIELDS[kind]
        for k in table:
            if k not in fields:
                hint = _did_you_mean(k, fields) or f"[[{kind}]] takes: {', '.join(fields)}"
                self.err(line(k), f"{label}: unknown field {k!r}", hint)
        for k in _REQUIRED.get(kind, ()):
            if k not in table:
                self.err(tline, f"{label}: missing required field {k!r}",
                         f"[[{kind}]] needs {', '.join(_REQUIRED[kind])}")

        spec = RuleSpec(kind, name, tline, {})
        kw = spec.kwargs
        def elem(k: str, j: int) -> int:
            return self.lines.element(kind, i, k, j)

        predicate, described, ips = self._conditions(table, label, line, kind, elem)
        spec.match = described or "*"
        if kind in ("safelist", "blocklist"):
            if not any(k in table for k in _CONDITIONS):
                self.err(tline, f"{label}: no condition",
                         "give at least one of path, path_prefix, method, ips, header, match")
            kw["predicate"] = predicate
            kw["ips"] = ips
        else:
            if ips is not None:
                predicate = _and(predicate, _ip_predicate(ips))
            kw["match"] = predicate
        if kind in ("fail2ban", "allow2ban"):
            if not any(k in table for k in _CONDITIONS):
                self.err(tline, f"{label}: no condition",
                         f"a {kind} rule counts requests that match: give path, "
                         "path_prefix, method, ips, header or match")
            for k in ("maxretry",):
                if k in table:
                    kw[k] = self._number(table[k], line(k), f"{label}: {k}", _COUNT)
            for k in ("findtime", "bantime"):
                if k in table:
                    kw[k] = self._number(table[k], line(k), f"{label}: {k}", _DURATION_N)
            spec.limit = (f"{kw.get('maxretry')} in {_fmt_s(kw.get('findtime'))}, "
                          f"ban {_fmt_s(kw.get('bantime'))}")
        if kind == "throttle":
            strategy = table.get("strategy")
            if strategy is not None:
                self._strategy(strategy, line("strategy"), label)
                kw["strategy"] = strategy
            if "burst" in table:
                kw["burst"] = self._number(table["burst"], line("burst"), f"{label}: burst",
                                           _COUNT)
            if "rates" in table:
                kw["rates"] = self._rates(table["rates"], line("rates"), label,
                                          strategy if isinstance(strategy, str) else None,
                                          kw.get("burst"), lambda j: elem("rates", j))
            if "cost" in table:
                v = table["cost"]
                if isinstance(v, str):
                    kw["cost"] = self._import(v, line("cost"), f"{label}: cost")
                else:
                    kw["cost"] = self._number(v, line("cost"), f"{label}: cost", _COST)
            if "dry_run" in table:
                kw["dry_run"] = self._bool(table["dry_run"], line("dry_run"), f"{label}: dry_run")
            if "count_when" in table:
                kw["count_when"] = self._count_when(table["count_when"], line("count_when"),
                                                    label)
            if "on_unreadable" in table:
                v = table["on_unreadable"]
                if v in ON_UNREADABLE:
                    kw["on_unreadable"] = v
                else:
                    self.err(line("on_unreadable"),
                             f"{label}: on_unreadable must be one of "
                             f"{', '.join(map(repr, ON_UNREADABLE))}, got {v!r}",
                             'on_unreadable = "client" (count per client when the key '
                             'cannot be read) or "refuse"')
            spec.limit = str(table.get("rates", "-"))
            opts = [str(table.get("strategy") or self.default_strategy)]
            if "burst" in table:
                opts.append(f"burst={table['burst']}")
            if "cost" in table:
                opts.append(f"cost={table['cost']}")
            if table.get("dry_run") is True:
                opts.append("dry_run")
            if "count_when" in table:
                opts.append(f"count_when={table['count_when']}")
            if "on_unreadable" in table:
                opts.append(f"on_unreadable={table['on_unreadable']}")
            spec.options = " ".join(opts)
        if kind == "concurrency":
            if "limit" in table:
                kw["limit"] = self._number(table["limit"], line("limit"), f"{label}: limit",
                                           _COUNT)
            for k in ("timeout", "retry_after"):
                if k in table:
                    kw[k] = self._number(table[k], line(k), f"{label}: {k}", _LEASE)
            spec.limit = f"{table.get('limit')} in flight"
            spec.options = f"lease timeout {_fmt_s(kw.get('timeout', 60.0))}"
        if kind in ("fail2ban", "allow2ban", "throttle", "track", "concurrency"):
            default = "global" if kind == "concurrency" else "client"
            spec.key = str(table.get("key", default))
            if "key" in table:
                kw["key"] = self._key(table["key"], line("key"), label)
            elif kind == "concurrency":
                kw["key"] = None
        if kind == "concurrency" and "key" not in table:
            spec.key = "global"
        return spec if len(self.errors) == n_errors else None

    def _shedding(self, table: Any) -> RuleSpec | None:
        tline = self.lines.table("shedding")
        label = "[shedding]"
        if not isinstance(table, dict):
            self.err(tline, f"{label} must be a table", "write [shedding] followed by settings")
            return None
        n_errors = len(self.errors)

        def line(k: str) -> int:
            return self.lines.key("shedding", 0, k)

        for k in table:
            if k not in _SHEDDING_FIELDS:
                self.err(line(k), f"{label}: unknown field {k!r}",
                         _did_you_mean(k, _SHEDDING_FIELDS)
                         or f"[shedding] takes: {', '.join(_SHEDDING_FIELDS)}")
        kw: dict[str, Any] = {}
        if "capacity" not in table:
            self.err(tline, f"{label}: missing required field 'capacity'",
                     "capacity = the number of requests in flight (all workers) at 100% load")
        else:
            kw["capacity"] = self._number(table["capacity"], line("capacity"),
                                          f"{label}: capacity", _COUNT)
        if "priority" in table:
            v = table["priority"]
            if isinstance(v, str):
                kw["priority"] = self._import(v, line("priority"), f"{label}: priority")
            else:
                self.err(line("priority"), f"{label}: priority must be a dotted import path",
                         'priority = "myapp.ops:priority" (a function of the request view '
                         "returning an int, higher is more important)")
        if "thresholds" in table:
            v = table["thresholds"]
            ok = isinstance(v, list) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1 for x in v
            ) and all(a <= b for a, b in itertools.pairwise(v))
            if not ok:
                self.err(line("thresholds"), f"{label}: thresholds must be a non-empty list of "
                         f"increasing fractions in (0, 1], got {v!r}",
                         "thresholds = [0.8, 1.0]: priority 0 is shed above 80% of capacity, "
                         "priority 1 only at 100%")
            else:
                kw["thresholds"] = tuple(float(x) for x in v)
        for k in ("timeout", "retry_after"):
            if k in table:
                kw[k] = self._number(table[k], line(k), f"{label}: {k}", _LEASE)
        if len(self.errors) != n_errors:
            return None
        th = kw.get("thresholds", (0.8, 1.0))
        return RuleSpec("shedding", "shedding", tline, kw, match="*", key="global",
                        limit=f"{kw.get('capacity')} in flight",
                        options="shed by priority at " + ", ".join(f"{x:.0%}" for x in th))

    # -- conditions ----------------------------------------------------------------------

    def _conditions(
        self, table: Mapping[str, Any], label: str, line: Callable[[str], int], kind: str,
        elem: Callable[[str, int], int] | None = None,
    ) -> tuple[Callable[[RequestView], Any] | None, str, IPSet | None]:
        preds: list[Callable[[RequestView], Any]] = []
        shown: list[str] = []
        ips: IPSet | None = None
        if "path" in table:
            paths = self._strings(table["path"], line("path"), f"{label}: path")
            if paths is not None:
                bad = [p for p in paths if not p.startswith("/")]
                if bad:
                    self.err(line("path"), f"{label}: path {bad[0]!r} does not start with '/'",
                             "paths are matched against the decoded request path, e.g. /login")
                exact = frozenset(paths)
                preds.append(lambda v: v.path in exact)
                shown.append("path=" + "|".join(paths))
        if "path_prefix" in table:
            prefixes = self._strings(table["path_prefix"], line("path_prefix"),
                                     f"{label}: path_prefix")
            if prefixes is not None:
                bad = [p for p in prefixes if not p.startswith("/")]
                if bad:
                    self.err(line("path_prefix"),
                             f"{label}: path_prefix {bad[0]!r} does not start with '/'",
                             "prefixes are matched against the decoded path, e.g. /api/")
                tup = tuple(prefixes)
                preds.append(lambda v: v.path.startswith(tup))
                shown.append("path^=" + "|".join(prefixes))
        if "method" in table:
            methods = self._strings(table["method"], line("method"), f"{label}: method")
            if methods is not None:
                up = [m.upper() for m in methods]
                bad = [m for m in up if m not in _METHODS]
                if bad:
                    self.err(line("method"), f"{label}: unknown HTTP method {bad[0]!r}",
                             _did_you_mean(bad[0], _METHODS) or f"methods: {', '.join(_METHODS)}")
                allowed = frozenset(up)
                preds.append(lambda v: v.method in allowed)
                shown.append("method=" + "|".join(up))
        if "ips" in table:
            entries = self._strings(table["ips"], line("ips"), f"{label}: ips")
            if entries is not None:
                good = True
                listed = isinstance(table["ips"], list) and elem is not None
                for j, e in enumerate(entries):
                    try:
                        IPSet([e])
                    except ConfigError as exc:
                        good = False
                        at = elem("ips", j) if listed and elem is not None else line("ips")
                        self.err(at, f"{label}: bad address or CIDR {e!r}: "
                                 f"{str(exc).split(': ', 1)[-1]}",
                                 "write addresses like 192.0.2.7 or networks like "
                                 "203.0.113.0/24 (no host bits set) or 2001:db8::/32")
                if good:
                    ips = IPSet(entries)
                    shown.append(f"ip in {len(entries)} net{'s' if len(entries) != 1 else ''}"
                                 if len(entries) > 2 else "ip in " + ",".join(entries))
        if "header" in table:
            v = table["header"]
            items = v if isinstance(v, list) else [v]
            for item in items:
                got = self._header(item, line("header"), label)
                if got is not None:
                    preds.append(got[0])
                    shown.append(got[1])
        if "match" in table:
            v = table["match"]
            paths = self._strings(v, line("match"), f"{label}: match")
            for p in paths or ():
                fn = self._import(p, line("match"), f"{label}: match")
                if fn is not None:
                    preds.append(fn)
                    shown.append(p)
        return _all(preds), " ".join(shown), ips

    def _header(
        self, item: Any, line: int, label: str
    ) -> tuple[Callable[[RequestView], Any], str] | None:
        hint = ('header = { name = "User-Agent", contains = "sqlmap" } (ops: '
                + ", ".join(_HEADER_OPS) + ")")
        if not isinstance(item, dict):
            self.err(line, f"{label}: header must be a table, got {item!r}", hint)
            return None
        unknown = [k for k in item if k not in ("name", *_HEADER_OPS)]
        for k in unknown:
            self.err(line, f"{label}: unknown header condition {k!r}",
                     _did_you_mean(k, _HEADER_OPS) or hint)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            self.err(line, f"{label}: header needs name = \"<header name>\"", hint)
            return None
        ops = [k for k in _HEADER_OPS if k in item]
        if len(ops) != 1:
            self.err(line, f"{label}: header {name!r} needs exactly one of "
                     f"{', '.join(_HEADER_OPS)}", hint)
            return None
        op, arg = ops[0], item[ops[0]]
        hname = name.lower()
        if op == "present":
            if not isinstance(arg, bool):
                self.err(line, f"{label}: header present must be true or false, got {arg!r}")
                return None
            want = arg
            return (lambda v: (hname in v.headers) is want), f"{name}{'' if want else ' absent'}"
        if not isinstance(arg, str):
            self.err(line, f"{label}: header {op} must be a string, got {arg!r}", hint)
            return None
        if op == "equals":
            return (lambda v: v.headers.get(hname) == arg), f"{name}=={arg!r}"
        if op == "contains":
            return (lambda v: arg in (v.headers.get(hname) or "")), f"{name}~{arg!r}"
        if op == "prefix":
            return ((lambda v: (v.headers.get(hname) or "").startswith(arg)),
                    f"{name}^={arg!r}")
        try:
            rx = re.compile(arg)
        except re.error as exc:
            self.err(line, f"{label}: bad header regex {arg!r}: {exc}",
                     "a Python regular expression, searched anywhere in the value")
            return None
        why = hazard(arg)
        if why is not None:
            self.err(line, f"{label}: header regex {arg!r} can take exponential time on a short "
                     f"value ({why})",
                     "rewrite it so each character can be matched one way only: (a+)+ -> a+, "
                     "(.*)* -> .*, (\\w+\\s?)+ -> \\w+(\\s\\w+)*, \\d+\\d+ -> \\d{2,}; "
                     "(?:bot|.ot)+ -> (?:.ot)+; or use contains / prefix, or a match "
                     "callable")
            return None
        # only the first MAX_REGEX_INPUT characters are searched (endpos: no copy)
        return ((lambda v: rx.search(v.headers.get(hname) or "", 0, MAX_REGEX_INPUT) is not None),
                f"{name}=~{arg!r}")

    # -- values ----------------------------------------------------------------------------

    def _strings(self, v: Any, line: int, what: str) -> list[str] | None:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return list(v)
        self.err(line, f"{what} must be a string or a non-empty list of strings, "
                 f"got {_type(v)}", 'e.g. "/login" or ["/a", "/b"]')
        return None

    def _number(self, v: Any, line: int, what: str, spec: _Number) -> Any:
        """``v`` checked by ``spec``; an error naming ``line`` (and None) when it fails."""
        try:
            return spec.coerce(v)
        except ConfigError as exc:
            self.err(line, f"{what} {exc}", spec.hint())
            return None

    def _bool(self, v: Any, line: int, what: str) -> bool | None:
        if not isinstance(v, bool):
            self.err(line, f"{what} must be true or false, got {_type(v)} {v!r}",
                     "TOML booleans are lowercase and unquoted: true / false")
            return None
        return v

    def _rates(self, v: Any, line: int, label: str, strategy: str | None,
               burst: int | None, elem: Callable[[int], int] | None = None) -> Any:
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            bad = False
            for j, x in enumerate(v):  # each at its own line
                try:
                    coerce_rates(x)
                except ConfigError as exc:
                    bad = True
                    self.err(elem(j) if elem is not None else line,
                             f"{label}: bad rate {x!r}: {exc}", _RATE_HINT)
            if bad:
                return None
            v = "; ".join(v)
        if not isinstance(v, str):
            self.err(line, f"{label}: rates must be a string, got {_type(v)} {v!r}",
                     'e.g. rates = "100/minute" or "100/minute; 20/second"')
            return None
        try:
            parsed = coerce_rates(v)
        except ConfigError as exc:
            self.err(line, f"{label}: bad rate {v!r}: {exc}", _RATE_HINT)
            return None
        for r in parsed:
            if r.limit > MAX_LIMIT or not _MIN_RATE_PERIOD <= r.period <= MAX_SECONDS:
                self.err(line, f"{label}: rate {v!r} out of range: a limit is at most "
                         f"{MAX_LIMIT}, a period from 1 second to {MAX_SECONDS / 86400:g} days",
                         _RATE_HINT)
                return None
        periods = [r.period for r in parsed]
        if len(set(periods)) != len(periods):
            self.err(line, f"{label}: two rates with the same period in {v!r}",
                     "keep one rate per period (the tighter one)")
            return None
        if strategy is not None and strategy in ALGORITHMS:
            for r in parsed:
                try:
                    make_algorithm(strategy, r, burst)
                except ConfigError as exc:
                    self.err(line, f"{label}: {exc}")
                    return None
        return v

    def _key(self, v: Any, line: int, label: str) -> Any:
        if not isinstance(v, str) or not v:
            self.err(line, f"{label}: key must be a string, got {_type(v)} {v!r}", _KEY_HINT)
            return None
        if v in ("client", "ip"):
            return v
        if v == "global":
            return _global_key
        if v == "path":
            return _path_key
        low = v.lower()
        if low.startswith("header:"):
            if not v[7:].strip():
                self.err(line, f"{label}: key {v!r} names no header", "e.g. header:X-Api-Key")
                return None
            return v
        if low.startswith("form:"):
            fld = v[5:].strip()
            if not fld:
                self.err(line, f"{label}: key {v!r} names no form field", "e.g. form:username")
                return None
            return _form_key(fld)
        if "." in v or ":" in v:
            return self._import(v, line, f"{label}: key")
        self.err(line, f"{label}: unknown key name {v!r}",
                 (_did_you_mean(v, _KEY_NAMES) + " " if _did_you_mean(v, _KEY_NAMES) else "")
                 + "expected " + _KEY_HINT)
        return None

    def _count_when(self, v: Any, line: int, label: str) -> Any:
        hint = ('count_when = [401, 403] (statuses), ["4xx", 500] (classes), or a dotted '
                'import path "myapp.rules:failed"')
        if isinstance(v, str) and ("." in v or ":" in v) and not _STATUS_CLASS.match(v):
            return self._import(v, line, f"{label}: count_when")
        items = v if isinstance(v, list) else [v]
        exact: set[int] = set()
        classes: set[int] = set()
        for x in items:
            if isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599:
                exact.add(x)
            elif isinstance(x, str) and _STATUS_CLASS.match(x):
                classes.add(int(x[0]))
            else:
                self.err(line, f"{label}: bad count_when entry {x!r}", hint)
                return None
        frozen, cls = frozenset(exact), frozenset(classes)
        return lambda r: r.status_code in frozen or r.status_code // 100 in cls

    def _import(self, spec: str, line: int, what: str) -> Any:
        try:
            fn = import_path(spec)
        except ConfigError as exc:
            self.err(line, f"{what}: {exc}",
                     "use 'package.module:function' (or package.module.function); the module "
                     "must be importable by the app (on sys.path / PYTHONPATH)")
            return None
        if not callable(fn):
            self.err(line, f"{what}: {spec!r} is not callable",
                     "point to a function taking the request view")
            return None
        self.imports.append((line, what, spec))
        return fn


def import_path(spec: str) -> Any:
    """The object a dotted path names: ``"pkg.mod:func"`` or ``"pkg.mod.func"``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r} is not a dotted import path")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


# -- small pieces --------------------------------------------------------------------------


def parse_duration(v: str | float) -> float:
    """Seconds from a duration as rules files write it: ``600``, ``"30s"``, ``"10m"``,
    ``"1h"``, ``"1d"``, ``"500ms"``.

    Raises:
        ConfigError: not a finite duration from 1 ms to ten years.
    """
    try:
        seconds: float = _DURATION_N.coerce(v)
    except ConfigError as exc:
        raise ConfigError(f"bad duration {v!r}: {exc}; give seconds (600) or a number "
                          'with a unit: "500ms", "30s", "10m", "1h", "1d"') from None
    return seconds


def _type(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _fmt_s(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _global_key(view: RequestView) -> str:
    return "*"


def _path_key(view: RequestView) -> str:
    return view.path


def _form_key(name: str) -> Callable[[RequestView], Any]:
    def form_key(view: RequestView) -> Any:
        return view.form.get(name) or None

    return form_key


def _ip_predicate(ips: IPSet) -> Callable[[RequestView], bool]:
    def in_ips(view: RequestView) -> bool:
        ip = view.client_ip
        return ip is not None and ip in ips

    return in_ips


def _and(a: Callable[[RequestView], Any] | None, b: Callable[[RequestView], Any]
         ) -> Callable[[RequestView], Any]:
    return b if a is None else _all([a, b])  # type: ignore[return-value]


def _all(preds: list[Callable[[RequestView], Any]]) -> Callable[[RequestView], Any] | None:
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    funcs = tuple(preds)
    # ``form`` in co_names tells the ASGI middleware to read form bodies first: keep the
    # information visible on the combined predicate when a user function reads the form.
    reads_form = any("form" in getattr(getattr(f, "__code__", None), "co_names", ())
                     for f in funcs)
    if reads_form:
        def all_of_form(v: RequestView) -> bool:
            v.form  # noqa: B018 - see above
            return all(f(v) for f in funcs)

        return all_of_form
    return lambda v: all(f(v) for f in funcs)


def build_limiter(ruleset: RuleSet, **limiter_kwargs: Any) -> Limiter:
    """A new Limiter from the file's [limiter] settings (``limiter_kwargs`` win), with the
    file's rules registered."""
    from ._limiter import Limiter

    settings = {**ruleset.limiter, **limiter_kwargs}
    limiter = Limiter(**settings)
    limiter.load_rules(ruleset)
    return limiter
