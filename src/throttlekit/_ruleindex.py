"""Throttles indexed by what they match: a request's candidates in a few dict lookups.

A throttle may declare what it matches (``methods=``, ``paths=``, ``path_prefix=``,
``hosts=``) beside, or instead of, a ``match`` callable. Those declarations are a
:class:`Where`; the :class:`RuleIndex` of a rule set turns every rule's ``Where`` into bit
masks (bit ``i``: the ``i``-th throttle in registration order) keyed by method, exact path,
path prefix (grouped by first path segment) and host. One request then costs a dict lookup
per dimension some rule constrains, an AND of small integers, and one more lookup from the
mask to the tuple of its rules (memoised), so rules that cannot apply are never asked, and
the candidates keep their registration order (which rule refuses first, the order of the
rate-limit policies).

The index decides the declared conditions exactly: a candidate's ``Where`` holds, and only its
``match`` callable (if any) is still asked. It is built at registration, never per request,
and is immutable: a rule set publishes a new one with each rule (see ``Rules``).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._request import RequestView

if TYPE_CHECKING:
    from ._rules import _Throttle

__all__ = ["RuleIndex", "Where", "host_of", "normal_host", "where_of"]

#: the methods ``methods=`` accepts (upper case; compared with the request's as sent)
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
#: bound on the memo of candidate tuples (one entry per distinct set of candidates)
MEMO_SIZE = 4096


class Where:
    """What a throttle declares it matches; every declared dimension must hold.

    Attributes:
        methods: the request methods (upper case), None for any.
        paths: exact paths, None for none declared.
        prefixes: path prefixes, None for none declared. The path condition holds when the
            path is one of ``paths`` or starts with one of ``prefixes`` (either declared).
        hosts: the hosts (lower case, no port), None for any.
    """

    __slots__ = ("hosts", "methods", "paths", "prefixes")

    def __init__(
        self, methods: frozenset[str] | None, paths: frozenset[str] | None,
        prefixes: tuple[str, ...] | None, hosts: frozenset[str] | None,
    ) -> None:
        self.methods = methods
        self.paths = paths
        self.prefixes = prefixes
        self.hosts = hosts

    def matches(self, view: RequestView) -> bool:
        """Whether ``view`` meets every condition (the reference the index is tested
        against; the engine asks the index instead)."""
        if self.methods is not None and view.method not in self.methods:
            return False
        if self.paths is not None or self.prefixes is not None:
            path = view.path
            if not (
                (self.paths is not None and path in self.paths)
                or (self.prefixes is not None and path.startswith(self.prefixes))
            ):
                return False
        return self.hosts is None or host_of(view) in self.hosts

    def shown(self) -> str:
        """How ``throttlekit rules`` and reprs show the conditions."""
        parts = []
        if self.methods is not None:
            parts.append("method=" + "|".join(sorted(self.methods)))
        if self.paths is not None:
            parts.append("path=" + "|".join(sorted(self.paths)))
        if self.prefixes is not None:
            parts.append("path^=" + "|".join(self.prefixes))
        if self.hosts is not None:
            parts.append("host=" + "|".join(sorted(self.hosts)))
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Where({self.shown()})"


def host_of(view: RequestView) -> str:
    """The request's host as ``hosts=`` compares it: the ``Host`` header, lower case,
    without its port ("" when absent)."""
    if view.is_wsgi and view.__class__ is RequestView:  # the environ's, without the
        host = view.raw.get("HTTP_HOST")  # mapping of its headers built for one read
    else:
        host = view.headers.get("host")
    return normal_host(host) if host.__class__ is str and host else ""


def normal_host(host: str) -> str:
    """``host`` as ``hosts=`` compares it: lower case, without a port (``[::1]:8000`` ->
    ``[::1]``, an IPv6 address in its compressed form) or a trailing dot (``example.com.``
    names example.com); of a header sent twice (joined ``a, b``), the first."""
    host = host.lower()
    if "," in host:  # no host holds a comma: a repeated header, joined by the server
        host = host[:host.find(",")].strip()
    if host[:1] == "[":
        end = host.find("]")
        if end < 0:
            return host
        try:
            return f"[{ipaddress.IPv6Address(host[1:end])}]"
        except ValueError:
            return host[:end + 1]
    colon = host.find(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".") if host[-1:] == "." else host


def _rule_host(host: str, what: str) -> str:
    """A host of ``hosts=`` as requests are compared with it; an IPv6 address may be
    written bare (``::1``) or bracketed. A ConfigError when nothing is left to compare or
    the name is not ASCII (browsers send its IDNA form)."""
    if host.count(":") > 1 and host[:1] != "[":
        try:
            host = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise ConfigError(f"{what}: hosts {host!r} is not a host name (an IPv6 "
                              f"address is written '::1' or '[::1]')") from None
    normal = normal_host(host)
    if not normal or normal == "[]":
        raise ConfigError(f"{what}: hosts {host!r} is not a host name (e.g. "
                          f"'api.example.com', no scheme, no path)")
    if not normal.isascii():
        try:
            hint = f": write {normal.encode('idna').decode('ascii')!r}"
        except UnicodeError:
            hint = ""
        raise ConfigError(f"{what}: hosts {host!r} is not ASCII; browsers send a name's "
                          f"IDNA form{hint}")
    return normal


def _strings(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        items = None
    if not items or not all(isinstance(x, str) and x for x in items):
        raise ConfigError(f"{what} must be a non-empty string or a non-empty list of them, "
                          f"got {value!r}")
    return items


def where_of(what: str, methods: Any = None, paths: Any = None, path_prefix: Any = None,
             hosts: Any = None, **unknown: Any) -> Where | None:
    """The :class:`Where` of a rule's keyword arguments (None when none is given); a bad
    value is a ``ConfigError`` naming it."""
    if unknown:
        raise TypeError(f"{what}: unexpected keyword argument {next(iter(unknown))!r}")
    ms = _strings(methods, f"{what}: methods")
    ps = _strings(paths, f"{what}: paths")
    pre = _strings(path_prefix, f"{what}: path_prefix")
    hs = _strings(hosts, f"{what}: hosts")
    if ms is None and ps is None and pre is None and hs is None:
        return None
    if ms is not None:
        ms = [m.upper() for m in ms]
        bad = [m for m in ms if m not in METHODS]
        if bad:
            raise ConfigError(f"{what}: unknown HTTP method {bad[0]!r} in methods "
                              f"(methods: {', '.join(sorted(METHODS))})")
    for label, items in (("paths", ps), ("path_prefix", pre)):
        bad = [p for p in items or () if not p.startswith("/")]
        if bad:
            raise ConfigError(f"{what}: {label} {bad[0]!r} does not start with '/' (paths are "
                              f"matched against the decoded request path, e.g. /api/)")
    if hs is not None:
        bad = [h for h in hs if h != h.strip() or "/" in h]
        if bad:
            raise ConfigError(f"{what}: hosts {bad[0]!r} is not a host name (e.g. "
                              f"'api.example.com', no scheme, no path)")
    return Where(
        frozenset(ms) if ms is not None else None,
        frozenset(ps) if ps is not None else None,
        tuple(dict.fromkeys(pre)) if pre is not None else None,
        frozenset(_rule_host(h, what) for h in hs) if hs is not None else None,
    )


class RuleIndex:
    """The throttles of a rule set by what they declare they match. Immutable once built,
    except its memo of candidate tuples (a dict: a racing insert only computes twice)."""

    __slots__ = (
        "by_host", "by_method", "by_path", "by_segment", "host_rest", "memo", "method_rest",
        "path_rest", "rules", "short", "uses_host", "uses_method", "uses_path",
    )

    def __init__(self, rules: tuple[_Throttle, ...]) -> None:
        self.rules = rules
        every = (1 << len(rules)) - 1
        wheres: list[Where | None] = [r.where for r in rules]
        self.uses_method = any(w is not None and w.methods is not None for w in wheres)
        self.uses_path = any(
            w is not None and (w.paths is not None or w.prefixes is not None) for w in wheres
        )
        self.uses_host = any(w is not None and w.hosts is not None for w in wheres)
        self.method_rest = self.path_rest = self.host_rest = every
        self.by_method: dict[str, int] = {}
        self.by_path: dict[str, int] = {}
        self.by_host: dict[str, int] = {}
        #: prefixes whose first segment is whole ("/api/..."), by that segment with its
        #: slashes ("/api/"): (prefix, mask) pairs; ``short``: the others ("/", "/ap")
        self.by_segment: dict[str, list[tuple[str, int]]] = {}
        self.short: list[tuple[str, int]] = []
        prefixes: dict[str, int] = {}
        for i, w in enumerate(wheres):
            bit = 1 << i
            if w is None:
                continue
            if w.methods is not None:
                self.method_rest &= ~bit
                for m in w.methods:
                    self.by_method[m] = self.by_method.get(m, 0) | bit
            if w.paths is not None or w.prefixes is not None:
                self.path_rest &= ~bit
                for p in w.paths or ():
                    self.by_path[p] = self.by_path.get(p, 0) | bit
                for p in w.prefixes or ():
                    prefixes[p] = prefixes.get(p, 0) | bit
            if w.hosts is not None:
                self.host_rest &= ~bit
                for h in w.hosts:
                    self.by_host[h] = self.by_host.get(h, 0) | bit
        # a method, path or host some rule names also admits the rules naming none
        for table, rest in ((self.by_method, self.method_rest), (self.by_path, 0),
                            (self.by_host, self.host_rest)):
            for k in table:
                table[k] |= rest
        for p, mask in prefixes.items():
            j = p.find("/", 1)
            if j > 0:
                self.by_segment.setdefault(p[:j + 1], []).append((p, mask))
            else:
                self.short.append((p, mask))
        self.memo: dict[int, tuple[_Throttle, ...]] = {}

    def candidates(self, view: RequestView) -> tuple[_Throttle, ...]:
        """The throttles whose declared conditions hold for ``view``, in registration
        order (a rule with a ``match`` callable still has it asked)."""
        mask = self.by_method.get(view.method, self.method_rest) if self.uses_method else -1
        if self.uses_path:
            path = view.path
            pm = self.path_rest | self.by_path.get(path, 0)
            j = path.find("/", 1)
            if j > 0:
                group = self.by_segment.get(path[:j + 1])
                if group is not None:
                    for p, m in group:
                        if path.startswith(p):
                            pm |= m
            for p, m in self.short:
                if path.startswith(p):
                    pm |= m
            mask &= pm
        if self.uses_host:
            mask &= self.by_host.get(host_of(view), self.host_rest)
        found = self.memo.get(mask)
        if found is None:
            found = self._remember(mask)
        return found

    def _remember(self, mask: int) -> tuple[_Throttle, ...]:
        rules = self.rules
        found = tuple(rules[i] for i in range(len(rules)) if mask >> i & 1)
        if len(self.memo) >= MEMO_SIZE:
            self.memo.clear()
        self.memo[mask] = found
        return found
