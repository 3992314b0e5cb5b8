"""The ``ips_from`` condition: the client IP is in a community blocklist (a plain list of
addresses and networks, or CrowdSec decisions) loaded from a file or a URL and refreshed
periodically, :class:`throttlekit.blocklists.Blocklist`::

    [[blocklist]]
    name = "crowdsec"

    [blocklist.ips_from]
    source = "http://127.0.0.1:8080/v1/decisions/stream"
    headers = { X-Api-Key = "env:CROWDSEC_BOUNCER_KEY" }
    refresh = "1m"

A string is the source alone (``ips_from = "/etc/throttlekit/drop.txt"``); a relative file
name is read from the rules file's directory. ``min_prefix = [8, 32]`` (the default) skips
entries wider than a /8 (IPv4) or a /32 (IPv6), so a feed's ``0.0.0.0/0`` blocks nobody.
A header value ``"env:NAME"`` is read from the environment variable ``NAME`` (keep secrets
out of the file). A file that cannot be read or parsed is an error at its line; a URL that
does not answer is logged and retried (the list starts empty), as in Python.
"""

from __future__ import annotations

import os
from typing import Any

from .._blocklists import FORMATS, Blocklist
from .._errors import ConfigError
from .conditions import Cond
from .errors import did_you_mean
from .fields import At, Duration, Field, type_name

__all__ = ["IpsFrom"]

_OPTIONS = ("source", "refresh", "format", "timeout", "headers", "types", "retry",
            "min_prefix")
_HINT = ('ips_from = "/etc/throttlekit/drop.txt", or a table: { source = "<file or URL>", '
         'refresh = "5m", format = "auto" | "text" | "crowdsec", timeout = "2s", '
         'headers = { X-Api-Key = "env:NAME" }, types = ["ban"], retry = "30s", '
         'min_prefix = [8, 32] }')


class IpsFrom(Field):
    def parse(self, v: Any, at: At) -> Cond | None:
        table = {"source": v} if isinstance(v, str) else v
        if not isinstance(table, dict):
            at.err(f"{at.what} must be a string or a table, got {type_name(v)} {v!r}", _HINT)
            return None
        for k in table:
            if k not in _OPTIONS:
                at.err(f"{at.what}: unknown option {k!r}",
                       did_you_mean(k, _OPTIONS) or _HINT)
                return None
        source = table.get("source")
        if not isinstance(source, str) or not source:
            at.err(f"{at.what} needs source = \"<file or URL>\"", _HINT)
            return None
        options = self._options(table, at)
        if options is None:
            return None
        base = at.report.base
        if base and not source.lower().startswith(("http://", "https://")):
            source = os.path.join(base, source)
        try:
            listed = Blocklist(source, **options)
        except ConfigError as exc:
            at.err(f"{at.what}: {exc}", _HINT)
            return None
        return Cond([listed], [f"ip in {source}"])

    @staticmethod
    def _options(table: dict[str, Any], at: At) -> dict[str, Any] | None:
        options: dict[str, Any] = {}
        for k in ("refresh", "timeout", "retry"):
            if k in table:
                options[k] = Duration().parse(table[k], at)
                if options[k] is None:
                    return None
        fmt = table.get("format", "auto")
        if fmt not in FORMATS:
            at.err(f"{at.what}: format must be one of {', '.join(map(repr, FORMATS))}, "
                   f"got {fmt!r}", _HINT)
            return None
        options["format"] = fmt
        if "types" in table:
            options["types"] = table["types"]
        if "min_prefix" in table:
            options["min_prefix"] = tuple(table["min_prefix"]) if isinstance(
                table["min_prefix"], list) else table["min_prefix"]
        headers = table.get("headers")
        if headers is not None:
            if not isinstance(headers, dict) or not all(
                isinstance(x, str) for x in (*headers, *headers.values())
            ):
                at.err(f"{at.what}: headers must be a table of strings, got {headers!r}",
                       _HINT)
                return None
            options["headers"] = found = {}
            for name, value in headers.items():
                if value.startswith("env:"):
                    var = value[4:]
                    if var not in os.environ:
                        at.err(f"{at.what}: header {name!r} reads the environment variable "
                               f"{var!r}, which is not set", "set it where the app runs")
                        return None
                    value = os.environ[var]
                found[name] = value
        return options
