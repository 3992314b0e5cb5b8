"""What the integrations share: default and application limits, per endpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._decorators import Entry, Group, LimitSpec, make_spec
from .._errors import ConfigError
from .._responder import Responder

if TYPE_CHECKING:
    from .._limiter import Limiter
    from .._responses import Denial
    from .._rules import Verdict

__all__ = ["Limits", "denial", "load_rules_file", "parse_limits"]


def denial(lim: Limiter, verdict: Verdict, accept: str | None) -> Denial:
    """The answer to a refused verdict (status, headers, body): the one responder's, with
    the limiter's header style, as the middleware gives it."""
    return Responder.of(lim).refuse(verdict, verdict.policies, accept)


def parse_limits(lim: Limiter | None, limits: Any, what: str) -> tuple[LimitSpec, ...]:
    """Default or application limits as users write them: a rate string (one limit,
    possibly of several rates), a list of them (one limit each), or LimitSpecs."""
    if limits is None:
        return ()
    if isinstance(limits, (str, LimitSpec)):
        limits = [limits]
    if not isinstance(limits, (list, tuple)):
        raise ConfigError(f"{what} must be a rate string or a list of them, got {limits!r}")
    out = []
    for item in limits:
        if isinstance(item, LimitSpec):
            out.append(item)
        else:
            out.append(make_spec(lim, item, what=what))
    return tuple(out)


class Limits:
    """Default limits (every route, each its own counter) and application limits (one
    counter shared by all routes), combined with an endpoint's own limits."""

    __slots__ = ("application", "cache", "defaults")

    def __init__(self, defaults: Sequence[LimitSpec], application: Sequence[LimitSpec]) -> None:
        self.defaults = tuple(defaults)
        self.application = tuple(application)
        self.cache: dict[Any, tuple[Entry, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.defaults or self.application)

    def entries(
        self,
        endpoint: str | None,
        group: Group | None,
        own: bool,
        extra: Sequence[tuple[str, LimitSpec]] = (),
        exempt: bool = False,
    ) -> tuple[Entry, ...]:
        """The limits of one request to ``endpoint``: ``extra`` (``(prefix, spec)``, e.g.
        blueprint limits, each route its own counter), defaults (unless the endpoint or an
        extra limit overrides them, or it is exempt), application limits (unless exempt)
        and the endpoint's own decorated limits when ``own`` (the integration evaluates
        them for the wrapper)."""
        out: list[Entry] = []
        override = False
        if group is not None:
            exempt = exempt or group.exempt
            if own:
                override = any(s.override_defaults for s in group.specs)
        for i, (prefix, spec) in enumerate(extra):
            override = override or spec.override_defaults
            if spec.scope is not None:
                out.append((spec.scope, spec))
            else:
                out.append((f"{prefix}:{endpoint}" + (f"#{i}" if i else ""), spec))
        if endpoint is not None and not exempt and not override:
            for i, spec in enumerate(self.defaults):
                out.append((f"default:{endpoint}" + (f"#{i}" if i else ""), spec))
        if not exempt:
            for i, spec in enumerate(self.application):
                out.append(("application" + (f"#{i}" if i else ""), spec))
        if own and group is not None:
            out.extend(group.entries)
        return tuple(out)


def load_rules_file(lim: Limiter, path: Any, what: str = "rules_file") -> None:
    """``lim.load_rules(path)`` for an integration's rules-file setting (``None``: none);
    the file the limiter already watches is not loaded twice."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"{what} must be the path of a rules file, got {path!r}")
    watcher = lim.engine.watcher
    if watcher is not None and os.path.abspath(watcher.path) == os.path.abspath(path):
        return
    lim.load_rules(path)


def limiter_from(options: dict[str, Any], limiter: Limiter | None) -> Limiter:
    """A Limiter from integration settings (``STORAGE_URL``, ``STRATEGY``, ...), or
    ``limiter`` with ``ENABLED`` applied; ``RULES_FILE`` is loaded into it."""
    lim = _limiter_from(options, limiter)
    load_rules_file(lim, options.get("RULES_FILE"), "RULES_FILE")
    return lim


def _limiter_from(options: dict[str, Any], limiter: Limiter | None) -> Limiter:
    from .._limiter import DEFAULT_STRATEGY, Limiter

    enabled = options.get("ENABLED", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"ENABLED must be True or False, got {enabled!r}")
    if limiter is not None:
        if "ENABLED" in options:
            limiter.enabled = enabled
        return limiter
    known = {"STORAGE_URL", "STRATEGY", "HEADER_STYLE", "HEADERS_ON_ALLOWED",
             "TRUSTED_PROXIES", "ON_STORAGE_ERROR", "ENABLED", "DEFAULT_LIMITS",
             "APPLICATION_LIMITS", "RULES", "RULES_FILE", "LIMITER", "IPV6_PREFIX"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown throttlekit setting(s): {', '.join(unknown)}")
    return Limiter(
        options.get("STORAGE_URL", "memory://"),
        strategy=options.get("STRATEGY", DEFAULT_STRATEGY),
        header_style=options.get("HEADER_STYLE", "draft10"),
        headers_on_allowed=options.get("HEADERS_ON_ALLOWED", True),
        trusted_proxies=options.get("TRUSTED_PROXIES", 0),
        ipv6_prefix=options.get("IPV6_PREFIX", 64),
        on_storage_error=options.get("ON_STORAGE_ERROR", "local"),
        enabled=enabled,
    )
