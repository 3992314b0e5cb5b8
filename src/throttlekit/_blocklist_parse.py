"""Parsing community blocklists: plain lists and CrowdSec decisions, to networks
``(version, address, prefix)`` (see :mod:`throttlekit._blocklists` for the formats)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import Any

from ._errors import ConfigError
from ._ipset import parse_network

__all__ = [
    "FORMATS",
    "LoadError",
    "Network",
    "checked",
    "json_doc",
    "json_entries",
    "narrow",
    "parse_list",
]

logger = logging.getLogger("throttlekit.blocklists")

FORMATS = ("auto", "text", "crowdsec")
_SCOPES = frozenset({"ip", "range"})
Network = tuple[int, int, int]
#: the byte order mark some editors (Notepad) write at the start of a UTF-8 file
_BOM = "\ufeff"


class LoadError(Exception):
    """A list could not be loaded (the last good one stays)."""


# -- parsing ---------------------------------------------------------------------------------


def _text_entries(text: str) -> tuple[list[Network], int, str | None]:
    """Networks of a plain list, how many lines were not addresses, and the first one."""
    out: list[Network] = []
    bad = 0
    first_bad: str | None = None
    for line in text.splitlines():
        cut = min((i for i in (line.find("#"), line.find(";")) if i >= 0), default=len(line))
        words = line[:cut].split(None, 1)
        if not words:
            continue
        try:
            out.append(parse_network(words[0]))
        except ConfigError:
            bad += 1
            first_bad = first_bad or words[0][:80]
    return out, bad, first_bad


def _decisions(doc: Any) -> Iterable[Any]:
    """The decision objects of a CrowdSec document (a list of decisions, of alerts, or
    ``null``)."""
    if doc is None:
        return
    if not isinstance(doc, list):
        raise LoadError(f"expected a JSON list of decisions or alerts, got {type(doc).__name__}")
    for item in doc:
        if isinstance(item, dict) and "decisions" in item and "value" not in item:
            found = item.get("decisions") or []  # an alert (cscli decisions list -o json)
            if not isinstance(found, list):
                raise LoadError(f"an alert's decisions are not a list: {found!r:.80}")
            yield from found
        else:
            yield item


def _decision_value(decision: Any, types: frozenset[str]) -> str | None:
    """The address or range a ban decision covers, None for other decisions."""
    if not isinstance(decision, dict):
        raise LoadError(f"expected a decision object, got {decision!r:.80}")
    if str(decision.get("type", "ban")).lower() not in types:
        return None
    if str(decision.get("scope", "ip")).lower() not in _SCOPES:
        return None
    value = decision.get("value")
    if not isinstance(value, str):
        raise LoadError(f"a decision without a value: {decision!r:.80}")
    return value


def json_entries(doc: Any, types: frozenset[str]) -> tuple[list[Network], int, str | None]:
    out: list[Network] = []
    bad = 0
    first_bad: str | None = None
    for decision in _decisions(doc):
        value = _decision_value(decision, types)
        if value is None:
            continue
        try:
            out.append(parse_network(value))
        except ConfigError:
            bad += 1
            first_bad = first_bad or value[:80]
    return out, bad, first_bad


def checked(found: tuple[list[Network], int, str | None], what: str) -> list[Network]:
    entries, bad, first_bad = found
    if bad and bad >= len(entries):
        raise LoadError(f"{bad} of {bad + len(entries)} entries of {what} are not addresses "
                        f"or networks (first: {first_bad!r}): not a blocklist?")
    if bad:
        logger.warning("skipped %d entries of %s that are not addresses or "
                       "networks (first: %r)", bad, what, first_bad)
    return entries


def narrow(entries: list[Network], min_prefix: tuple[int, int], what: str) -> list[Network]:
    """``entries`` without the networks wider than ``min_prefix`` (IPv4, IPv6 prefix
    lengths), which are logged: a feed's ``0.0.0.0/0`` (a mistake, or a poisoned feed)
    would block every client."""
    v4, v6 = min_prefix
    wide = [e for e in entries if _too_wide(e, v4, v6)]
    if not wide:
        return entries
    version, address, prefix = wide[0]
    first = ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address)
    logger.warning("skipped %d entries of %s wider than /%d (IPv4) or /%d (IPv6) (first: "
                   "%s/%d): min_prefix sets the widest network a list may hold",
                   len(wide), what, v4, v6, first, prefix)
    return [e for e in entries if not _too_wide(e, v4, v6)]


def _too_wide(entry: Network, v4: int, v6: int) -> bool:
    version, address, prefix = entry
    if version == 6 and address >> 32 == 0xFFFF and prefix >= 96:
        return prefix - 96 < v4  # IPv4-mapped (IPSet keeps it as IPv4): ::ffff:0:0/96 is /0
    return prefix < (v4 if version == 4 else v6)


def _sniff(text: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    head = text.lstrip()[:1]
    return "crowdsec" if head in ("[", "{") or text.strip() == "null" else "text"


def json_doc(text: str, what: str) -> Any:
    """``text`` parsed as JSON; :class:`LoadError` when it is not JSON, or nested too deep
    for the parser (a hostile ``[[[[...]]]]`` raises RecursionError, not ValueError)."""
    try:
        return json.loads(text.removeprefix(_BOM))
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"{what} is not JSON: {exc}") from None


def _listed(doc: dict[str, Any], name: str) -> list[Any]:
    """``doc[name]``, a list of decisions (absent or null: none)."""
    found = doc.get(name) or []
    if not isinstance(found, list):
        raise LoadError(f"{name!r} is not a list of decisions: {found!r:.80}")
    return found


def parse_list(text: str, fmt: str = "auto", types: Iterable[str] = ("ban",),
               what: str = "the list", min_prefix: tuple[int, int] = (0, 0)
               ) -> list[Network]:
    """The networks of a blocklist document (see the module docstring for the formats)
    as ``(version, address, prefix)``; :class:`LoadError` when it is not one. Networks
    wider than ``min_prefix`` (IPv4, IPv6 prefix lengths) are skipped and logged."""
    text = text.removeprefix(_BOM)  # an editor's byte order mark is no part of the list
    kind = _sniff(text, fmt)
    if kind == "text":
        return narrow(checked(_text_entries(text), what), min_prefix, what)
    doc = json_doc(text, what)
    if isinstance(doc, dict):
        doc = [*_listed(doc, "new"), *_listed(doc, "decisions")]
    entries = checked(json_entries(doc, frozenset(t.lower() for t in types)), what)
    return narrow(entries, min_prefix, what)
