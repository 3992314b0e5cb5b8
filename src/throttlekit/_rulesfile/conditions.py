"""The conditions a rule of a rules file can have: ``path``, ``path_prefix``, ``method``,
``ips``, ``header`` and ``match``. Each reads to a :class:`Cond` (predicates of the request
view, how ``throttlekit rules`` shows them, the IP set); :func:`combine` makes one predicate
of all the conditions a rule has (all must hold)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import ConfigError
from .._ipset import IPSet
from .._redos import MAX_REGEX_INPUT, hazard
from .._rules import reads_form, uses_form
from .errors import did_you_mean
from .fields import At, Field, type_name

if TYPE_CHECKING:
    from .._request import RequestView

__all__ = ["Cond", "Header", "Ips", "Match", "Methods", "Paths", "combine", "ip_predicate"]

Predicate = Callable[["RequestView"], Any]
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_HEADER_OPS = ("equals", "contains", "prefix", "regex", "present")


class Cond(NamedTuple):
    """What one condition field adds to a rule."""

    preds: list[Predicate]
    shown: list[str]
    ips: IPSet | None = None
    #: the same condition as ``Limiter.throttle`` declares it (``methods``, ``paths``,
    #: ``path_prefix``): a throttle is then indexed by it instead of asking ``preds``
    declared: dict[str, list[str]] | None = None


def strings(v: Any, at: At) -> list[str] | None:
    """``v`` as a list of strings (a string or a non-empty list of them), else an error."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return list(v)
    at.err(f"{at.what} must be a string or a non-empty list of strings, got {type_name(v)}",
           'e.g. "/login" or ["/a", "/b"]')
    return None


def _checked(v: Any, at: At, ok: Callable[[str], bool],
             error: Callable[[str], tuple[str, str]],
             norm: Callable[[str], str] | None = None) -> list[str] | None:
    """:func:`strings` of ``v`` (``norm``-ed), the first not ``ok`` reported (``error``:
    its message and hint); None when ``v`` is no list of strings."""
    items = strings(v, at)
    if items is None:
        return None
    if norm is not None:
        items = [norm(x) for x in items]
    bad = next((x for x in items if not ok(x)), None)
    if bad is not None:
        at.err(*error(bad))
    return items


def _declared(pred: Predicate, shown: str, name: str, values: list[str]) -> Cond:
    """A condition ``Limiter.throttle`` declares as ``name=values`` too (see ``Cond``)."""
    return Cond([pred], [shown + "|".join(values)], None, {name: values})


class Paths(Field):
    """Exact paths, or (``prefix``) path prefixes; each starts with ``/``."""

    def __init__(self, prefix: bool = False) -> None:
        self.prefix = prefix

    def parse(self, v: Any, at: At) -> Cond | None:
        hint = ("prefixes are matched against the decoded path, e.g. /api/" if self.prefix
                else "paths are matched against the decoded request path, e.g. /login")
        paths = _checked(v, at, lambda p: p.startswith("/"), lambda bad: (
            f"{at.what} {bad!r} does not start with '/'", hint))
        if paths is None:
            return None
        if self.prefix:
            tup = tuple(paths)
            return _declared(lambda v: v.path.startswith(tup), "path^=", "path_prefix", paths)
        exact = frozenset(paths)
        return _declared(lambda v: v.path in exact, "path=", "paths", paths)


class Methods(Field):
    def parse(self, v: Any, at: At) -> Cond | None:
        up = _checked(v, at, lambda m: m in _METHODS, lambda bad: (
            f"{at.label}: unknown HTTP method {bad!r}",
            did_you_mean(bad, _METHODS) or f"methods: {', '.join(_METHODS)}"), str.upper)
        if up is None:
            return None
        allowed = frozenset(up)
        return _declared(lambda v: v.method in allowed, "method=", "methods", up)


class Ips(Field):
    """Addresses and CIDRs the client IP must be in (each checked at its own line)."""

    def parse(self, v: Any, at: At) -> Cond | None:
        entries = strings(v, at)
        if entries is None:
            return None
        good = True
        for j, e in enumerate(entries):
            try:
                IPSet([e])
            except ConfigError as exc:
                good = False
                at.err(f"{at.label}: bad address or CIDR {e!r}: {str(exc).split(': ', 1)[-1]}",
                       "write addresses like 192.0.2.7 or networks like 203.0.113.0/24 (no "
                       "host bits set) or 2001:db8::/32",
                       at.elements(j) if isinstance(v, list) else None)
        if not good:
            return None
        shown = (f"ip in {len(entries)} net{'s' if len(entries) != 1 else ''}"
                 if len(entries) > 2 else "ip in " + ",".join(entries))
        return Cond([], [shown], IPSet(entries))


class Match(Field):
    """Dotted import paths to predicates of the request view."""

    def parse(self, v: Any, at: At) -> Cond | None:
        out = Cond([], [])
        for p in strings(v, at) or ():
            fn = at.callable(p)
            if fn is not None:
                out.preds.append(fn)
                out.shown.append(p)
        return out


_HEADER_HINT = ('header = { name = "User-Agent", contains = "sqlmap" } (ops: '
                + ", ".join(_HEADER_OPS) + ")")


class Header(Field):
    """A header condition (a table), or a list of them. A ``regex`` that can backtrack
    exponentially is refused (``_redos.hazard``), and is searched in the first
    ``MAX_REGEX_INPUT`` characters of the value only."""

    def parse(self, v: Any, at: At) -> Cond:
        out = Cond([], [])
        for item in v if isinstance(v, list) else [v]:
            got = self._one(item, at)
            if got is not None:
                out.preds.append(got[0])
                out.shown.append(got[1])
        return out

    def _one(self, item: Any, at: At) -> tuple[Predicate, str] | None:
        label = at.label
        if not isinstance(item, dict):
            at.err(f"{label}: header must be a table, got {item!r}", _HEADER_HINT)
            return None
        for k in item:
            if k not in ("name", *_HEADER_OPS):
                at.err(f"{label}: unknown header condition {k!r}",
                       did_you_mean(k, _HEADER_OPS) or _HEADER_HINT)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            at.err(f"{label}: header needs name = \"<header name>\"", _HEADER_HINT)
            return None
        ops = [k for k in _HEADER_OPS if k in item]
        if len(ops) != 1:
            at.err(f"{label}: header {name!r} needs exactly one of {', '.join(_HEADER_OPS)}",
                   _HEADER_HINT)
            return None
        op, arg = ops[0], item[ops[0]]
        hname = name.lower()
        if op == "present":
            if not isinstance(arg, bool):
                at.err(f"{label}: header present must be true or false, got {arg!r}")
                return None
            want = arg
            return (lambda v: (hname in v.headers) is want), f"{name}{'' if want else ' absent'}"
        if not isinstance(arg, str):
            at.err(f"{label}: header {op} must be a string, got {arg!r}", _HEADER_HINT)
            return None
        if op == "equals":
            return (lambda v: v.headers.get(hname) == arg), f"{name}=={arg!r}"
        if op == "contains":
            return (lambda v: arg in (v.headers.get(hname) or "")), f"{name}~{arg!r}"
        if op == "prefix":
            return ((lambda v: (v.headers.get(hname) or "").startswith(arg)),
                    f"{name}^={arg!r}")
        return _regex(name, hname, arg, at)


def _regex(name: str, hname: str, arg: str, at: At) -> tuple[Predicate, str] | None:
    try:
        rx = re.compile(arg)
    except re.error as exc:
        at.err(f"{at.label}: bad header regex {arg!r}: {exc}",
               "a Python regular expression, searched anywhere in the value")
        return None
    why = hazard(arg)
    if why is not None:
        at.err(f"{at.label}: header regex {arg!r} can take exponential time on a short "
               f"value ({why})",
               "rewrite it so each character can be matched one way only: (a+)+ -> a+, "
               "(.*)* -> .*, (\\w+\\s?)+ -> \\w+(\\s\\w+)*, \\d+\\d+ -> \\d{2,}; "
               "(?:bot|.ot)+ -> (?:.ot)+; or use contains / prefix, or a match callable")
        return None
    # only the first MAX_REGEX_INPUT characters are searched (endpos: no copy)
    return ((lambda v: rx.search(v.headers.get(hname) or "", 0, MAX_REGEX_INPUT) is not None),
            f"{name}=~{arg!r}")


def ip_predicate(ips: IPSet) -> Predicate:
    def in_ips(view: RequestView) -> bool:
        ip = view.client_ip
        return ip is not None and ip in ips

    return in_ips


def combine(preds: list[Predicate]) -> Predicate | None:
    """One predicate true when all of ``preds`` are (None for none)."""
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    funcs = tuple(preds)

    def all_of(v: RequestView) -> bool:
        return all(f(v) for f in funcs)

    # the combined predicate reads the form when one of its parts does
    return reads_form(all_of, uses_form(*funcs))
