"""Admin commands against a live store: ``inspect``, ``block``, ``unblock``, ``bans``,
``reset`` and ``top``.

The store is ``--storage URL`` (e.g. ``redis://10.0.0.5:6379/0?prefix=throttlekit:``), or the
``storage`` of the rules file's ``[limiter]`` table (``--rules rules.toml``), or that of an
app's limiter (``--limiter myapp.wsgi:limiter``). The rules (from ``--rules`` or
``--limiter``) tell ``inspect`` which limits a key has; ``block``/``unblock``/``bans``/
``reset`` need only the store, except that an IPv6 network needs the app's IPv6 prefix
(``--rules``, ``--limiter`` or ``--ipv6-prefix N``). ``top`` sums the top offenders every
monitor wrote to the store (Redis) over the last ``--window``, or reads monitor status
endpoints (``--url``, one per process to cover; see docs/admin.md). Tables by default,
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import sys
import time
import urllib.request
from typing import Any

from .._errors import ConfigError, StorageError
from ._output import add_token_options, plain, print_json, print_table, seconds, token_of

__all__ = ["register"]


def _limiter(args: argparse.Namespace) -> Any:
    """The Limiter the command works on: the app's, or one on --storage with --rules."""
    from .._limiter import Limiter
    from .._rulesfile import import_path, load_rules

    if getattr(args, "limiter", None):
        limiter = import_path(args.limiter)
        if not isinstance(limiter, Limiter):
            raise ConfigError(f"{args.limiter!r} is not a throttlekit.Limiter")
        if args.storage:
            raise ConfigError("give --limiter or --storage, not both")
        args.store_url = repr(limiter.storage)
        return limiter
    rules = load_rules(args.rules) if getattr(args, "rules", None) else None
    settings: dict[str, Any] = dict(rules.limiter) if rules is not None else {}
    if args.storage:
        settings["storage"] = args.storage
    if "storage" not in settings:
        raise ConfigError("no store: give --storage URL (or --rules FILE whose [limiter] "
                          "table names one, or --limiter module:limiter)")
    prefix = getattr(args, "ipv6_prefix", None)
    if prefix is not None:
        if "ipv6_prefix" in settings and settings["ipv6_prefix"] != prefix:
            raise ConfigError(f"--ipv6-prefix {prefix} contradicts the rules file's "
                              f"ipv6_prefix = {settings['ipv6_prefix']!r}")
        settings["ipv6_prefix"] = prefix
    if isinstance(settings["storage"], str):
        args.store_url = settings["storage"]
    limiter = Limiter(**settings)
    if rules is not None:
        limiter.load_rules(rules)
    return limiter


def _admin_limiter(args: argparse.Namespace) -> Any:
    """:func:`_limiter` for a command taking a key (``block``, ``unblock``, ``reset``,
    ``inspect``); ``args.prefix_known``: whether the app's IPv6 prefix is known (from
    ``--rules``, ``--limiter`` or ``--ipv6-prefix``), without which an IPv6 network is
    refused: the CLI cannot tell whether it is a client key of the app."""
    limiter = _limiter(args)
    if args.limiter and args.ipv6_prefix is not None and (
        args.ipv6_prefix != limiter.resolver.ipv6_prefix
    ):
        raise ConfigError(f"--ipv6-prefix {args.ipv6_prefix} contradicts the limiter's "
                          f"ipv6_prefix = {limiter.resolver.ipv6_prefix}")
    args.prefix_known = bool(args.rules or args.limiter or args.ipv6_prefix is not None)
    if not args.prefix_known:
        net = _ipv6_network(args.key)
        if net is not None:
            raise ConfigError(
                f"{args.key!r} is an IPv6 network, and the app's IPv6 prefix (its client "
                f"keys) is not known here: pass --ipv6-prefix N (the Limiter's ipv6_prefix, "
                f"64 unless set), or --rules FILE / --limiter module:name"
            )
    return limiter


def _ipv6_network(key: str) -> ipaddress.IPv6Network | None:
    """The IPv6 network (shorter than /128) ``key`` or the key of a ban names, if any."""
    text = key.strip()
    kind, sep, rest = text.partition(":")
    if sep and kind in ("fail2ban", "allow2ban"):
        text = rest.partition(":")[2].strip()
    if "/" not in text or ":" not in text:
        return None
    try:
        net = ipaddress.IPv6Network(text, strict=False)
    except ValueError:
        return None
    return net if net.prefixlen < 128 else None


def _assumed_prefix(args: argparse.Namespace, keys: list[str]) -> None:
    """Say on stderr when an IPv6 client key was derived with the default prefix."""
    if not args.prefix_known and any("/" in k and ":" in k for k in keys):
        print("note: the client key of an IPv6 address assumes the default /64 prefix; pass "
              "--ipv6-prefix N (or --rules FILE) if the app keys IPv6 clients otherwise",
              file=sys.stderr)


def _blocked(limiter: Any) -> list[Any]:
    return list(limiter.blocked())


def _expires(expires_at: float, now: float) -> float:
    return math.inf if math.isinf(expires_at) else max(expires_at - now, 0.0)


# -- inspect -----------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:
    from .._admin import refuses, rule_keys

    limiter = _admin_limiter(args)
    # the discriminators the key names: an address in any spelling and its client key, a
    # long or "#..." value by its hash (as the rules stored them)
    keys = rule_keys(limiter.resolver, args.key, "inspect")
    _assumed_prefix(args, keys)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for key in keys:
        rows += _rule_rows(limiter, key)
        rows += _lease_rows(limiter, key, first=key == keys[0])
    blocks = [b for b in _blocked(limiter) if refuses(b.key, keys)]
    if args.json:
        print_json({
            "key": keys[0],
            "keys": keys,
            "blocked": [{"key": b.key, "expires_in": _expires(b.expires_at, now),
                         "reason": b.reason} for b in blocks],
            "rules": rows,
        })
        return 0
    for b in blocks:
        print(f"BLOCKED by {b.key!r} for {seconds(_expires(b.expires_at, now))}"
              + (f" ({b.reason})" if b.reason else ""))
    if not rows:
        print("no rules known: give --rules FILE or --limiter module:limiter"
              if not blocks else "")
        return 0
    _print_rows(rows, several_keys=len(keys) > 1)
    return 0


def _rule_rows(limiter: Any, key: str) -> list[dict[str, Any]]:
    """``inspect``'s rows of the throttles and bans for discriminator ``key``: a throttle
    with plans has a row per plan and rate (every plan reads the rule's one count); one
    with another rates function, a row saying so."""
    from .._plans import Plans
    from .._rules import NS
    from ..storage.base import Check

    storage = limiter.storage
    rules = limiter.engine.rules
    rows: list[dict[str, Any]] = []
    for t in rules.throttles:
        if t.resolve is None:
            rows += _throttle_rows(storage, t, key, None)
        elif isinstance(t.resolve, Plans):
            for plan, rates in t.resolve.rates.items():
                rows += _throttle_rows(storage, t.variants.of(rates), key, plan)
        else:
            rows.append({"key": key, "rule": t.name, "kind": "throttle", "plan": None,
                         "limit": "the caller's (a rates function)", "strategy": t.strategy,
                         "remaining": None, "reset": None, "next": "as its rates say",
                         "dry_run": t.dry_run})
    for b in rules.bans:
        d = storage.apply([Check(b.algorithm, NS + key, 0, True)], consume=False).decisions[0]
        rows.append({
            "key": key, "rule": b.name, "kind": b.kind, "plan": None,
            "limit": f"{b.maxretry} in {b.findtime:g}s", "strategy": "sliding_window",
            "remaining": d.remaining, "reset": d.reset_after,
            "next": f"{b.maxretry - d.remaining} match(es) counted", "dry_run": False,
        })
    return rows


def _throttle_rows(storage: Any, t: Any, key: str, plan: str | None) -> list[dict[str, Any]]:
    """The rows of throttle ``t`` (a plan's variant when ``plan``), one per rate."""
    from .._rules import NS
    from ..storage.base import Check

    # cost 0 reads what is left; cost 1 says whether one more request would pass
    checks = [Check(a, NS + key, c, True) for c in (0, 1) for a in t.algorithms]
    decisions = storage.apply(checks, consume=False).decisions
    n = len(t.algorithms)
    return [{
        "key": key, "rule": name, "kind": "throttle", "plan": plan,
        "limit": f"{alg.rate.limit}/{alg.rate.period:g}s",
        "strategy": t.strategy, "remaining": now_d.remaining,
        "reset": now_d.reset_after,
        "next": "allowed" if d.allowed else f"refused for {seconds(d.retry_after)}",
        "dry_run": t.dry_run,
    } for name, alg, now_d, d in zip(t.policy_names, t.algorithms, decisions[:n],
                                     decisions[n:], strict=True)]


def _lease_rows(limiter: Any, key: str, *, first: bool) -> list[dict[str, Any]]:
    """``inspect``'s rows of the concurrency rules and load shedding for ``key``; the
    global slots and shedding on the ``first`` key's rows only."""
    from .._concurrency import SHED_RULE, lease_key

    conc = limiter.engine.concurrency
    if conc is None:
        return []
    rows: list[dict[str, Any]] = []
    for c in conc.rules:
        if c.key_name == "global" and not first:
            continue  # one row for the global slots
        disc = "*" if c.key_name == "global" else key
        n = limiter.storage.inflight(lease_key(c.name, disc))
        rows.append({
            "key": key, "rule": c.name, "kind": "concurrency",
            "limit": f"{c.limit} in flight", "strategy": "lease",
            "remaining": max(c.limit - n, 0), "reset": None, "plan": None,
            "next": "allowed" if n < c.limit else "refused", "dry_run": False,
        })
    if conc.shedding is not None and first:
        n = conc.inflight(SHED_RULE)
        rows.append({
            "key": key, "rule": SHED_RULE, "kind": "shedding",
            "limit": f"{conc.shedding.capacity} in flight", "strategy": "lease",
            "remaining": max(conc.shedding.capacity - n, 0), "reset": None, "plan": None,
            "next": f"{n} in flight", "dry_run": False,
        })
    return rows


def _print_rows(rows: list[dict[str, Any]], *, several_keys: bool) -> None:
    """``inspect``'s table; with ``several_keys`` (an IPv6 address: its own rows and its
    client key's) a KEY column."""
    head: tuple[str, ...] = ("RULE", "KIND", "LIMIT", "STRATEGY", "REMAINING", "RESET",
                             "NEXT REQUEST")
    table: list[tuple[Any, ...]] = [
        (r["rule"] + (f" [plan {r['plan']}]" if r["plan"] else "")
         + (" (dry run)" if r["dry_run"] else ""), r["kind"], r["limit"],
         r["strategy"], "-" if r["remaining"] is None else r["remaining"],
         seconds(r["reset"]), r["next"]) for r in rows
    ]
    if several_keys:
        head = ("KEY", *head)
        table = [(r["key"], *row) for r, row in zip(rows, table, strict=True)]
    print_table(head, table)


# -- the dynamic blocklist ---------------------------------------------------------------


def _ttl(text: str) -> float:
    """``--ttl``: a duration as the rules file writes it (``600``, ``"10m"``, ``"1h"``)."""
    from .._rulesfile import parse_duration

    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_block(args: argparse.Namespace) -> int:
    limiter = _admin_limiter(args)
    # normalised as requests' addresses are; a key that would block nobody is a ConfigError
    key = limiter.block(args.key, args.ttl, args.reason or "")
    if args.json:
        print_json({"key": key, "ttl": args.ttl, "reason": args.reason or ""})
    else:
        print(f"blocked {key} " + (f"for {seconds(args.ttl)}" if args.ttl else "until "
                                   "unblocked"))
    return 0


def run_unblock(args: argparse.Namespace) -> int:
    limiter = _admin_limiter(args)
    key: str = args.key
    # also lifts the key's bans found in the blocklist when the rules are not given
    found = bool(limiter.unblock(key))
    if args.json:
        print_json({"key": args.key, "unblocked": found})
    else:
        print(f"unblocked {args.key}" if found else f"{args.key} was not blocked")
    return 0 if found else 1


def run_bans(args: argparse.Namespace) -> int:
    limiter = _limiter(args)
    now = time.time()
    blocks = _blocked(limiter)
    rows = [{"key": b.key, "expires_in": _expires(b.expires_at, now),
             "expires_at": None if math.isinf(b.expires_at) else b.expires_at,
             "reason": b.reason} for b in blocks]
    if args.json:
        print_json([{**r, "expires_in": None if math.isinf(r["expires_in"]) else r["expires_in"]}
                    for r in rows])
        return 0
    if not rows:
        print("no blocks or bans")
        return 0
    print_table(("KEY", "EXPIRES IN", "REASON"),
                [(r["key"], seconds(r["expires_in"]), r["reason"] or "-") for r in rows])
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from .._admin import reset_keys

    limiter = _admin_limiter(args)
    # the rule discriminators the key names (an address: also its client key); a key that
    # names nothing (empty, a network that is no client key) is a ConfigError
    keys = reset_keys(limiter.resolver, args.key)
    _assumed_prefix(args, keys)
    limiter.reset_rules(args.key)  # every rule's state for these discriminators
    limiter.reset(args.key)  # direct limiter.hit(key, ...) state
    if args.json:
        print_json({"key": args.key, "reset": True, "keys": keys})
    else:
        print(f"reset every limit of {args.key.strip()}"
              + (f" (rule keys: {', '.join(keys)})" if keys != [args.key] else ""))
    return 0


# -- top ---------------------------------------------------------------------------------


def _fetch(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read().decode("utf-8"))
            return data
    except Exception as exc:
        raise ConfigError(f"cannot read the status endpoint {url}: {exc}") from None


def _top_from_store(limiter: Any, window: float) -> tuple[dict[str, int], dict[str, Any]]:
    from ..monitor._store import top_of

    try:
        totals = top_of(limiter.storage, window, time.time())
    except StorageError:
        raise
    except Exception as exc:  # the client library's own error: the store failed
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc
    if totals is None:
        print(f"note: monitors write no offender data to a {type(limiter.storage).__name__}; "
              "read their status endpoints with --url (see docs/admin.md)", file=sys.stderr)
        return {}, {}
    return totals, {}


def run_top(args: argparse.Namespace) -> int:
    totals: dict[str, int] = {}
    sources: dict[str, Any] = {}
    limiter = None
    if args.url:
        token = token_of(args)
        for url in args.url:
            snapshot = _fetch(url, token, args.timeout)
            for key, count in snapshot.get("top") or []:
                totals[str(key)] = totals.get(str(key), 0) + int(count)
                sources[str(key)] = sources.get(str(key), 0) + 1
    else:
        if not (args.storage or args.rules or args.limiter):
            raise ConfigError("top reads what the monitors wrote to the store (--storage URL) "
                              "or their status endpoints (--url http://host/status); see "
                              "docs/admin.md")
        limiter = _limiter(args)
        totals, sources = _top_from_store(limiter, args.window)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[: args.n]
    banned: set[str] = set()
    if args.storage or args.rules or args.limiter:
        banned = {b.key.rsplit(":", 1)[-1] for b in _blocked(limiter or _limiter(args))}
    rows = [{"key": k, "requests": c, "sources": sources.get(k), "blocked": k in banned}
            for k, c in ranked]
    if args.json:
        print_json(rows)
        return 0
    print_table(("#", "KEY", "REQUESTS", "SOURCES", "BLOCKED"),
                [(i, r["key"], r["requests"], "-" if r["sources"] is None else r["sources"],
                  "yes" if r["blocked"] else "")
                 for i, r in enumerate(rows, 1)])
    if not rows:
        print("no traffic recorded by the monitor(s)")
    return 0


# -- registration ------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, rules: bool = True, prefix: bool = False) -> None:
    p.add_argument("--storage", help="storage URL, e.g. redis://host:6379/0?prefix=throttlekit:")
    if rules:
        p.add_argument("--rules", metavar="FILE",
                       help="rules file (its rules, and its [limiter] storage)")
        p.add_argument("--limiter", metavar="MODULE:NAME",
                       help="an app's Limiter by import path (its rules and storage)")
    if prefix:
        p.add_argument("--ipv6-prefix", type=_positive, metavar="N", default=None,
                       help="the app's Limiter ipv6_prefix (the network IPv6 clients are "
                       "keyed by); needed for an IPv6 network without --rules/--limiter")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _positive(text: str) -> int:
    """An integer >= 1 (``top -n``, ``--ipv6-prefix``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the admin commands to the command line."""
    ttl = (("--ttl",), {"type": _ttl, "default": None,
                        "help": '600, "30s", "10m", "1h", "1d" (default: until unblocked)'})
    reason = (("--reason",), {"default": "", "help": "shown by `bans`"})
    keyed: tuple[tuple[str, str, str, str, Any, tuple[Any, ...]], ...] = (
        ("inspect", "the state of every rule for one key",
         "Show every rule's state for KEY: throttle counts and what is left (a row per plan "
         "and rate for a rule with plans), ban counters, blocks and bans, concurrency "
         "leases. The rules come from --rules or --limiter.",
         "the key (discriminator): a client IP (any spelling; an IPv6 address also shows "
         "its client key), a user name, ...", run_inspect, ()),
        ("block", "add a key to the dynamic blocklist",
         "Block KEY (a client IP or another rule key) in the store: every worker refuses "
         "it with a 403 within about a second, until --ttl runs out or "
         "`throttlekit unblock KEY`.",
         "a client IP (any spelling: normalised as requests are) or an IPv6 client key "
         "('2001:db8:1:2::/64', the app's prefix)", run_block, (ttl, reason)),
        ("unblock", "lift a block or ban (exit 1 if there was none)",
         "Lift the block and every ban of KEY; every worker admits it again within about "
         "a second. Exit status 1 if there was none.",
         "the key as `bans` lists it, or a client IP (any spelling; an IPv6 address also "
         "lifts its network's entries) or user name: its block and every ban of it",
         run_unblock, ()),
    )
    for name, summary, description, key_help, func, options in keyed:
        p = _command(subparsers, name, summary, description)
        p.add_argument("key", help=key_help)
        for flags, kwargs in options:
            p.add_argument(*flags, **kwargs)
        _common(p, prefix=True)
        p.set_defaults(func=func)

    p = _command(subparsers, "bans", "the dynamic blocklist: blocks and bans, with expiry",
                 "List the dynamic blocklist: operator blocks and the bans of fail2ban, "
                 "allow2ban and the shield, with their reason and expiry.")
    _common(p)
    p.set_defaults(func=run_bans)

    p = _command(subparsers, "reset", "forget every limit's state (throttle counts, ban "
                 "counters) for one key",
                 "Forget every limit's state for KEY, as if it had sent no request: the "
                 "counts of every throttle (every rate and strategy) and the match counters "
                 "of fail2ban and allow2ban, and direct limiter.hit(KEY, ...) state, in the store "
                 "every worker reads. Blocks and bans "
                 "stay: lift them with `throttlekit unblock KEY`.")
    p.add_argument("key", help="a client IP (any spelling; an IPv6 address also resets its "
                   "client key), a user name, ...")
    _common(p, prefix=True)
    p.set_defaults(func=run_reset)

    p = _command(subparsers, "top", "top offenders, as the monitors wrote them to the store "
                 "(or from their status endpoints with --url)",
                 "The clients sending the most requests: summed over the last --window "
                 "seconds from what the monitors wrote to the store (Redis), or read from "
                 "their status endpoints (--url, one per process). The endpoints' token: "
                 "--token-file FILE, $THROTTLEKIT_TOKEN or --token.")
    p.add_argument("--url", action="append", default=[],
                   help="a monitor status endpoint (repeat for each process or host)")
    add_token_options(p)
    p.add_argument("-n", type=_positive, default=10, help="how many (default 10)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per endpoint")
    p.add_argument("--window", type=_ttl, default=10.0,
                   help="from the store: seconds to sum over (default 10)")
    _common(p)
    p.set_defaults(func=run_top)


def _command(subparsers: Any, name: str, summary: str, description: str) -> Any:
    """A subcommand whose ``--help`` opens with ``description`` (``throttlekit --help``
    lists ``summary``)."""
    return subparsers.add_parser(name, help=summary, description=plain(description))
