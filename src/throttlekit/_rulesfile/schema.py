"""What each section of a rules file holds: one :class:`Kind` per rule kind (its fields, which
are required, how a rule of it registers and how ``throttlekit rules`` shows it), the
``[shedding]`` table, and the ``[limiter]`` settings.

A kind's fields are the keyword arguments of its ``Limiter`` method (``[[throttle]]`` ↔
``Limiter.throttle``), except that the conditions (``path``, ``method``, ``ips``, ...) make
its ``match`` (``predicate`` and ``ips`` for safelists and blocklists). ``tests/
test_rulesfile_schema.py`` holds the two together. To add a field: add it to the method, give
it a :class:`F` here (a field type from ``fields.py``), and pass it on in ``register``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from .._plans import describe
from .._rules import ON_UNREADABLE
from .conditions import Header, Ips, Match, Methods, Paths
from .fields import (
    INTERVAL,
    LEASE,
    Bool,
    Choice,
    CountWhen,
    Duration,
    Escalate,
    Field,
    Fractions,
    Import,
    Int,
    IntOrImport,
    Key,
    Rates,
    Raw,
    Strategy,
    TrustedProxies,
)
from .listsource import IpsFrom

__all__ = ["CONDITIONS", "KINDS", "LIMITER", "SHEDDING", "F", "Kind", "kind_of"]

Register = Callable[[Any, Any, str, dict[str, Any]], None]
#: (limit, options) columns of ``throttlekit rules`` from the table and what it parsed to
Describe = Callable[[Mapping[str, Any], dict[str, Any], str], tuple[str, str]]


@dataclass(frozen=True)
class F:
    """One field of a table: its name, how its value is read, whether it must be given."""

    name: str
    type: Field
    required: bool = False


@dataclass(frozen=True)
class Kind:
    """One section of a rules file (``[[throttle]]``, ..., ``[shedding]``)."""

    name: str
    #: the Limiter method a rule of this kind mirrors (its keyword arguments are the fields)
    method: str
    #: the kind's own fields, in the order they are read (a field sees those before it)
    fields: tuple[F, ...]
    #: ``register(rules, concurrency, name, kwargs)``: add one rule to the two registries
    register: Register
    describe: Describe = lambda table, kw, strategy: ("-", "")
    #: rules have a name and conditions; [shedding] has neither
    rule: bool = True
    #: the hint when a rule of this kind has no condition; "" = conditions are optional
    needs_condition: str = ""
    #: the keyword argument(s) the conditions make: ("match",) or ("predicate", "ips")
    condition_args: tuple[str, ...] = ("match",)
    #: the fields as ``takes:`` hints list them, when not in reading order
    listed: tuple[str, ...] = ()
    #: the hint for a missing required field ("" = "[[kind]] needs ...")
    required_hint: str = ""
    title: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", f"[[{self.name}]]" if self.rule else
                               f"[{self.name}]")

    def names(self) -> tuple[str, ...]:
        """Every field a table of this kind may hold, as the hints list them."""
        own = self.listed or tuple(f.name for f in self.fields)
        return ("name", *(c.name for c in CONDITIONS), *own) if self.rule else own

    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    def key(self) -> Key | None:
        """The kind's key field type (what ``throttlekit rules`` shows without one)."""
        return next((f.type for f in self.fields if isinstance(f.type, Key)), None)

    def arguments(self) -> frozenset[str]:
        """The keyword arguments a rule of this kind is registered with."""
        named = ("name", *self.condition_args) if self.rule else ()
        return frozenset((*named, *(f.name for f in self.fields)))


CONDITIONS = (
    F("path", Paths()),
    F("path_prefix", Paths(prefix=True)),
    F("method", Methods()),
    F("ips", Ips()),
    F("header", Header()),
    F("ips_from", IpsFrom()),
    F("match", Match()),
)
_KEY = F("key", Key())
_LEASE_FIELDS = (F("timeout", Duration(LEASE)), F("retry_after", Duration(LEASE)))


# -- registration and description ------------------------------------------------------------


def _register_list(kind: str) -> Register:
    def register(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
        rules.add_list(kind, name, kw.get("predicate"), kw.get("ips"))

    return register


def _register_ban(kind: str) -> Register:
    def register(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
        rules.add_ban(kind, name, kw["match"], kw["maxretry"], kw["findtime"], kw["bantime"],
                      kw.get("key"), kw.get("escalate", False))

    return register


def _register_throttle(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
    rules.add_throttle(name, kw["rates"], kw.get("match"), kw.get("key"), kw.get("strategy"),
                       kw.get("cost"), kw.get("burst"), kw.get("dry_run", False),
                       kw.get("count_when"), kw.get("on_unreadable", "client"),
                       methods=kw.get("methods"), paths=kw.get("paths"),
                       path_prefix=kw.get("path_prefix"))


def _register_track(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
    rules.add_track(name, kw.get("match"), kw.get("key"))


def _register_concurrency(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
    if name in rules.names:
        raise ConfigError(f"duplicate rule name {name!r} (already a {rules.names[name]})")
    concurrency.add(name, kw["limit"], key=kw.get("key"), match=kw.get("match"),
                    timeout=kw.get("timeout"), retry_after=kw.get("retry_after"))


def _register_shedding(rules: Any, concurrency: Any, name: str, kw: dict[str, Any]) -> None:
    concurrency.set_shedding(**kw)


def fmt_seconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _describe_ban(table: Mapping[str, Any], kw: dict[str, Any], strategy: str
                  ) -> tuple[str, str]:
    escalate = kw.get("escalate")
    return (f"{kw.get('maxretry')} in {fmt_seconds(kw.get('findtime'))}, "
            f"ban {fmt_seconds(kw.get('bantime'))}"), "escalating" if escalate else ""


def _describe_throttle(table: Mapping[str, Any], kw: dict[str, Any], strategy: str
                       ) -> tuple[str, str]:
    opts = [str(table.get("strategy") or strategy)]
    for k in ("burst", "cost"):
        if k in table:
            opts.append(f"{k}={table[k]}")
    if table.get("dry_run") is True:
        opts.append("dry_run")
    for k in ("count_when", "on_unreadable"):
        if k in table:
            opts.append(f"{k}={table[k]}")
    return describe(kw.get("rates", table.get("rates", "-"))), " ".join(opts)


def _describe_concurrency(table: Mapping[str, Any], kw: dict[str, Any], strategy: str
                          ) -> tuple[str, str]:
    return (f"{table.get('limit')} in flight",
            f"lease timeout {fmt_seconds(kw.get('timeout', 60.0))}")


def _describe_shedding(table: Mapping[str, Any], kw: dict[str, Any], strategy: str
                       ) -> tuple[str, str]:
    th = kw.get("thresholds", (0.8, 1.0))
    return (f"{kw.get('capacity')} in flight",
            "shed by priority at " + ", ".join(f"{x:.0%}" for x in th))


# -- the kinds ------------------------------------------------------------------------------


def _list_kind(name: str) -> Kind:
    return Kind(name, name, (), _register_list(name), condition_args=("predicate", "ips"),
                needs_condition="give at least one of path, path_prefix, method, ips, header, "
                                "ips_from, match")


def _ban_kind(name: str) -> Kind:
    return Kind(
        name, name,
        (F("maxretry", Int(1), required=True), F("findtime", Duration(), required=True),
         F("bantime", Duration(), required=True), _KEY, F("escalate", Escalate())),
        _register_ban(name), _describe_ban,
        needs_condition=f"a {name} rule counts requests that match: give path, path_prefix, "
                        "method, ips, header, ips_from or match",
        listed=("key", "maxretry", "findtime", "bantime", "escalate"),
    )


THROTTLE = Kind(
    "throttle", "throttle",
    (
        F("strategy", Strategy()),
        F("burst", Int(1)),
        F("rates", Rates(strategy_from="strategy", burst_from="burst"), required=True),
        F("cost", IntOrImport(0)),
        F("dry_run", Bool()),
        F("count_when", CountWhen()),
        F("on_unreadable", Choice(ON_UNREADABLE, 'on_unreadable = "client" (count per client '
                                  'when the key cannot be read) or "refuse"')),
        _KEY,
    ),
    _register_throttle, _describe_throttle,
    # method, path and path_prefix are declared (``Limiter.throttle(methods=...)``): the
    # rule set's index skips the rule for other requests without asking it
    condition_args=("match", "methods", "paths", "path_prefix", "hosts"),
    listed=("rates", "key", "strategy", "cost", "burst", "dry_run", "count_when",
            "on_unreadable"),
)
CONCURRENCY = Kind(
    "concurrency", "concurrency",
    (F("limit", Int(1), required=True), *_LEASE_FIELDS, F("key", Key(shown="global"))),
    _register_concurrency, _describe_concurrency,
    listed=("limit", "key", "timeout", "retry_after"),
)
#: rule kinds in evaluation order (bans share one step, in file order)
KINDS: tuple[Kind, ...] = (
    _list_kind("safelist"), _list_kind("blocklist"), _ban_kind("fail2ban"),
    _ban_kind("allow2ban"), THROTTLE, Kind("track", "track", (_KEY,), _register_track),
    CONCURRENCY,
)
SHEDDING = Kind(
    "shedding", "shed",
    (
        F("capacity", Int(1), required=True),
        F("priority", Import('priority = "myapp.ops:priority" (a function of the request view '
                             "returning an int, higher is more important)")),
        F("thresholds", Fractions()),
        *_LEASE_FIELDS,
    ),
    _register_shedding, _describe_shedding, rule=False,
    required_hint="capacity = the number of requests in flight (all workers) at 100% load",
)
_BY_NAME = {k.name: k for k in (*KINDS, SHEDDING)}

#: Limiter settings a [limiter] table may hold (keyword arguments of Limiter), each with
#: how it is checked here (Raw: by the Limiter)
LIMITER: dict[str, Field] = {
    "storage": Raw(), "strategy": Strategy(), "burst": Int(1), "on_storage_error": Raw(),
    "retry_interval": Duration(INTERVAL), "error_log_interval": Duration(INTERVAL),
    "denial_cache_size": Int(0), "trusted_proxies": TrustedProxies(), "ipv6_prefix": Int(1, 128),
    "header_style": Raw(), "headers_on_allowed": Raw(),
}


def kind_of(name: str) -> Kind:
    return _BY_NAME[name]
