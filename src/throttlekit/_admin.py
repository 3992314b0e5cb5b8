"""Admin operations of a limiter: the dynamic blocklist (``block``, ``unblock``) and
forgetting state (``reset``, ``reset_rules``), behind ``Limiter``'s methods.

An operator's key is read without I/O, in the form requests are matched and rules store
their keys in (:func:`block_key`, :func:`rule_keys`, :func:`reset_keys`; the admin CLI
uses them too). Each operation is written once as a generator of storage calls: it yields
``(method, async twin, args)`` and is sent each answer; :func:`run` and :func:`arun` are
the sync and async shells that make the calls.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ._clientip import normalize_ip
from ._direct import check_key
from ._errors import ConfigError
from ._ipset import _parse_network
from ._keys import HASH_PREFIX, UNREADABLE_PREFIX, admin_rule_key, bound_key, encodable
from ._resilience import ResilientStore
from ._rules import NS

if TYPE_CHECKING:
    from ._clientip import ClientIPResolver
    from ._limiter import Limiter
    from ._rules import Rules
    from .storage.base import Block, Storage

__all__ = [
    "BAN_KINDS", "admin_text", "arun", "block", "block_key", "refuses", "reset", "reset_keys",
    "reset_rules", "rule_keys", "run", "unblock", "unblock_keys", "unblock_targets",
]

#: the kinds of ban entries in the dynamic blocklist: "<kind>:<rule>:<key>"
BAN_KINDS = ("fail2ban", "allow2ban")
#: what a block key that failed to parse as an address was probably meant to be
_IP_LIKE = re.compile(r"[0-9.]+|[0-9A-Fa-f:.%\[\]]*:[0-9A-Fa-f:.%\[\]]*")
_LEADING_ZERO = re.compile(r"(?:^|[.:])0[0-9]")

_R = TypeVar("_R")
#: one storage call: the sync method, its async twin and the arguments
Call = tuple[Callable[..., Any], Callable[..., Awaitable[Any]], tuple[Any, ...]]
#: an admin operation: yields its storage calls, is sent each answer, returns its result
Ops = Generator[Call, Any, _R]


def run(ops: Ops[_R]) -> _R:
    """Make the storage calls of ``ops`` one by one; its result."""
    try:
        call = next(ops)
        while True:
            call = ops.send(call[0](*call[2]))
    except StopIteration as done:
        result: _R = done.value
        return result


async def arun(ops: Ops[_R]) -> _R:
    """Async twin of :func:`run`: the async twin of each call, awaited."""
    try:
        call = next(ops)
        while True:
            call = ops.send(await call[1](*call[2]))
    except StopIteration as done:
        result: _R = done.value
        return result


# -- the operations ----------------------------------------------------------------------


def block(limiter: Limiter, key: str, ttl: float | None, reason: str) -> Ops[str]:
    """``Limiter.block``: the key as stored. The block is cached here at once, looked up
    before this worker's cached refusals (which stay: a block lifts none); every other
    worker drops its cached refusals with the generation, since they would answer the
    blocked client 429 where the store answers 403."""
    stored = block_key(limiter.resolver, key, "block")
    storage = limiter.storage
    now = limiter.engine.now()
    yield storage.block, storage.ablock, (stored, ttl, reason, now)
    store = limiter.store
    if isinstance(store, ResilientStore) and store.denials is not None:
        store.denials.banned(stored, ttl, now)
    yield store.next_generation, store.anext_generation, ()
    return stored


def unblock(limiter: Limiter, key: str) -> Ops[bool]:
    """``Limiter.unblock``: whether there was a block or ban to lift."""
    keys = unblock_keys(limiter.resolver, key)
    storage = limiter.storage
    listed = yield _listed, _alisted, (storage, limiter.engine.now())
    found = False
    resets: list[str] = []
    for entry, disc in unblock_targets(limiter.engine.rules, keys, listed):
        found = (yield storage.unblock, storage.aunblock, (entry,)) or found
        if disc is not None and disc not in resets:  # a fresh start for its counters
            resets.append(disc)
    if resets:
        yield storage.reset, storage.areset, (tuple(NS + d for d in resets),)
    yield from _forget(limiter, keys, resets)
    if not found:
        _check_ban_rule(limiter.engine.rules, keys[0])
    return found


def reset(limiter: Limiter, key: str) -> Ops[None]:
    """``Limiter.reset``: the state of the direct API's ``key``."""
    check_key(key)
    admin_text(key, "reset")
    key = bound_key(key)
    storage = limiter.storage
    yield storage.reset, storage.areset, ((key,),)
    yield from _forget(limiter, [key], [])


def reset_rules(limiter: Limiter, key: str) -> Ops[None]:
    """``Limiter.reset_rules``: every rule's state of the discriminators ``key`` names."""
    discs = reset_keys(limiter.resolver, key)
    storage = limiter.storage
    yield storage.reset, storage.areset, (tuple(NS + d for d in discs),)
    yield from _forget(limiter, [], discs)


def _listed(storage: Storage, now: int | None) -> list[Block]:
    """The blocklist, or [] when the store fails (the unblock itself then says so)."""
    try:
        return storage.blocked(now)
    except Exception:
        return []


async def _alisted(storage: Storage, now: int | None) -> list[Block]:
    try:
        return await storage.ablocked(now)
    except Exception:
        return []


def _forget(limiter: Limiter, keys: list[str], discs: list[str]) -> Ops[None]:
    """After an admin change: this process's memory of ``keys`` and of the rule
    discriminators ``discs`` dropped, then the store's generation moved on (every other
    worker's)."""
    for k in keys:
        limiter.forget_local(k)
    for d in discs:
        limiter.forget_local(d)
        limiter.forget_local(NS + d)
    store = limiter.store
    yield store.next_generation, store.anext_generation, ()


# -- reading an operator's key -----------------------------------------------------------


def admin_text(key: object, what: str) -> str:
    """An admin command's key, stripped; an empty one is a ConfigError."""
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"{what} key must be a non-empty string, got {key!r}")
    return key.strip()


def block_key(resolver: ClientIPResolver, key: object, what: str) -> str:
    """``key`` of ``Limiter.block`` / ``unblock`` in the form requests are matched in
    (see ``_clientip``); a plain name only for ``unblock``, as the discriminator of
    bans (``form:username`` rules); a ban (``fail2ban:<rule>:<key>``) only for
    ``unblock``."""
    text = admin_text(key, what)
    assert isinstance(key, str)
    kind, sep, rest = text.partition(":")
    if sep and kind in BAN_KINDS:
        if what == "block":
            raise ConfigError(
                f"cannot block {key!r}: bans are made by rules; block the client's "
                f"address or network instead"
            )
        rule, sep, disc = rest.partition(":")
        if not rule or not sep or not disc.strip():
            raise ConfigError(f"{what} key {key!r}: a ban is '{kind}:<rule>:<key>'")
        disc = _client_block_key(resolver, disc.strip(), key, what, name_ok=True)
        return f"{kind}:{rule}:{disc}"
    return _client_block_key(resolver, text, key, what, name_ok=what == "unblock")


def _client_block_key(resolver: ClientIPResolver, text: str, key: str, what: str, *,
                      name_ok: bool) -> str:
    prefix = resolver.ipv6_prefix
    if "/" in text:
        net = _parse_network(text)  # ConfigError naming a bad network
        addr = net.network_address
        length = net.prefixlen
        if net.version == 6 and length == prefix:
            found = resolver.client_key(str(addr))
            if found is not None:
                return found
        if length == net.max_prefixlen:
            found = normalize_ip(str(addr))
            if found is not None:
                return found
        raise ConfigError(
            f"cannot {what} the network {key!r}: the dynamic blocklist matches a client's "
            f"address or its client key (an IPv4 address, an IPv6 /{prefix}); list "
            f"networks with limiter.blocklist(name, ips=[...]) or a rules file's "
            f"[[blocklist]] ips"
        )
    ip = normalize_ip(text)
    if ip is not None:
        return ip
    if _IP_LIKE.fullmatch(text) or not name_ok:
        hint = ""
        if _LEADING_ZERO.search(text):
            hint = " (a leading zero is ambiguous: octal or decimal?)"
        ban = "" if what == "block" else " or a ban ('fail2ban:<rule>:<key>')"
        raise ConfigError(
            f"{what} key {key!r} is not an IP address{hint} or an IPv6 /{prefix} client "
            f"key ('2001:db8:1:2::/{prefix}'){ban}: a block of it would match no request"
        )
    # a ban's discriminator (a user name, ...), as the rules store it (hashed when
    # long or not valid UTF-8 text)
    return admin_rule_key(text)


def rule_keys(resolver: ClientIPResolver, key: object, what: str) -> list[str]:
    """The rule discriminators an operator's ``key`` names (``Limiter.reset_rules``,
    ``throttlekit inspect``/``reset``), as the rules store them: a client address in
    any spelling is the address and its client key (an IPv6 address: its
    ``ipv6_prefix`` network); a client-key network is that client key; ``#sha256:...``
    and ``#client:...`` (as logs and verdicts show them) are taken as they are, the
    address of ``#client:`` normalised; any other value is what a client sent
    (``"alice"``): hashed when long or starting with ``#``, as the rules hashed it."""
    text = admin_text(key, what)
    assert isinstance(key, str)
    if text.startswith(UNREADABLE_PREFIX):
        ck = _client_of(resolver, text[len(UNREADABLE_PREFIX):].strip(), key, what)
        return [bound_key(UNREADABLE_PREFIX + ck[-1]) if ck else bound_key(text)]
    if text.startswith(HASH_PREFIX):
        return [text]
    found = _client_of(resolver, text, key, what)
    if found:
        return found
    keys = [admin_rule_key(key)]
    if text != key:  # " alice " as sent, and "alice"
        keys.append(admin_rule_key(text))
    return keys


def reset_keys(resolver: ClientIPResolver, key: object) -> list[str]:
    """The rule discriminators ``Limiter.reset_rules`` resets: those of
    :func:`rule_keys`, and a client's ``on_unreadable`` bucket."""
    discs = rule_keys(resolver, key, "reset")
    if _client_of(resolver, admin_text(key, "reset"), str(key), "reset"):
        discs.append(UNREADABLE_PREFIX + discs[-1])  # the on_unreadable bucket
    return discs


def _client_of(resolver: ClientIPResolver, text: str, key: str, what: str) -> list[str]:
    """An address (its normalised text, then its client key when different) or a
    client-key network (the client key) named by ``text``; [] for anything else."""
    if "/" in text:
        if normalize_ip(text.partition("/")[0]) is None:
            return []  # a name with a slash ("a/b")
        # an address with a length: the client key or the address, or a ConfigError
        return [_client_block_key(resolver, text, key, what, name_ok=False)]
    ip = normalize_ip(text)
    if ip is None:
        return []
    ck = resolver.client_key(ip)
    return [ip] if ck is None or ck == ip else [ip, ck]


# -- what an unblock lifts ---------------------------------------------------------------


def unblock_keys(resolver: ClientIPResolver, key: str) -> list[str]:
    """The normalised key; for an IPv6 address (alone or in a ban) the same with its
    client key; and the key as written when it differs (an entry an older version
    stored unnormalised)."""
    norm = block_key(resolver, key, "unblock")
    keys = [norm]
    kind, sep, rest = norm.partition(":")
    head = ""
    disc = norm
    if sep and kind in BAN_KINDS:
        rule, _, disc = rest.partition(":")
        head = f"{kind}:{rule}:"
    if ":" in disc and "/" not in disc:  # an IPv6 address: its client key too
        ck = resolver.client_key(disc)
        if ck is not None and ck != disc:
            keys.append(head + ck)
    raw = key.strip()
    if raw not in keys and encodable(raw):
        keys.append(raw)
    return keys


def unblock_targets(
    rules: Rules, keys: list[str], listed: list[Block]
) -> list[tuple[str, str | None]]:
    """(blocklist entry, ban discriminator or None) for every key of
    :func:`unblock_keys`, with the ``listed`` entries that hold the IPv6 address."""
    targets: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(entry: str, disc: str | None) -> None:
        if entry not in seen:
            seen.add(entry)
            targets.append((entry, disc))

    for key in keys:
        kind, sep, rest = key.partition(":")
        if sep and kind in BAN_KINDS:  # a ban as `blocked` lists it
            rule_name, _, disc = rest.partition(":")
            disc = admin_rule_key(disc)
            entry = f"{kind}:{rule_name}:{disc}"
            known = rules.ban_rule_of(entry) is not None or any(
                b.key in (key, entry) for b in listed
            )
            add(entry, disc if known else None)
            if entry != key:
                add(key, None)
            continue
        add(key, None)
        disc = admin_rule_key(key)  # a ban's discriminator as the rules stored it
        for rule in rules.bans:
            add(rule.prefix + disc, disc)
        # Bans made by rules this limiter doesn't know (another process, the admin
        # CLI): "<fail2ban|allow2ban>:<rule>:<key>" entries of the shared blocklist.
        suffix = ":" + disc
        for b in listed:
            name = b.key
            if name.endswith(suffix):
                # exactly "<kind>:<rule>:<key>" (rule names are escaped: no ":")
                k, _, rule_name = name[: -len(suffix)].partition(":")
                if k in BAN_KINDS and rule_name and ":" not in rule_name:
                    add(name, disc)
    v6 = _ipv6_address(keys[0])
    if v6 is not None:  # networks holding the address, whatever prefix made them
        for b in listed:
            net, ban = _holding(b.key, v6)
            if net is not None:
                add(b.key, net if ban else None)
    return targets


def refuses(entry: str, keys: list[str]) -> bool:
    """Whether the blocklist ``entry`` (a block, or a ban ``<kind>:<rule>:<key>``) refuses
    the key that ``keys`` (:func:`rule_keys`) name: one of them, or, for an IPv6 address,
    a network holding it."""
    kind, sep, rest = entry.partition(":")
    held = rest.partition(":")[2] if sep and kind in BAN_KINDS else entry
    if held in keys:
        return True
    v6 = _ipv6_address(keys[0])
    return v6 is not None and _holding(entry, v6)[0] is not None


def _check_ban_rule(rules: Rules, key: str) -> None:
    """A ban of a rule this limiter does not have (a typo: ``fail2ban:scanner:...``)
    that lifted nothing is an error when the limiter has rules."""
    kind, sep, rest = key.partition(":")
    if not sep or kind not in BAN_KINDS or not rules.names:
        return
    rule = rest.partition(":")[0]
    known = sorted(r.name for r in rules.bans if r.kind == kind)
    if rule not in known:
        raise ConfigError(
            f"unblock {key!r}: no {kind} rule {rule!r} in this limiter's rules "
            f"({', '.join(known) or f'it has no {kind} rules'}) and no such ban"
        )


def _ipv6_address(key: str) -> ipaddress.IPv6Address | None:
    """The IPv6 address a normalised admin key is, if it is one."""
    if ":" not in key or "/" in key:
        return None
    try:
        return ipaddress.IPv6Address(key)
    except ValueError:
        return None


def _holding(entry: str, addr: ipaddress.IPv6Address) -> tuple[str | None, bool]:
    """The network of a blocklist ``entry`` (``"<net>"`` or ``"<kind>:<rule>:<net>"``)
    when it holds ``addr`` (else None), and whether the entry is a ban."""
    net = entry
    kind, sep, rest = entry.partition(":")
    ban = bool(sep) and kind in BAN_KINDS
    if ban:
        net = rest.partition(":")[2]
    if "/" not in net:
        return None, ban
    try:
        found = ipaddress.IPv6Network(net)
    except ValueError:
        return None, ban
    return (net if addr in found else None), ban
