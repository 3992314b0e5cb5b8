"""``throttlekit simulate``: replay an attack through the real middleware, on simulated time.

The scenario's traffic (see :mod:`throttlekit.cli.scenarios`) is replayed twice, in one
pass, in front of a model of the server (its ``[server]``: workers, service times, a
bounded queue, clients' timeout): unprotected, straight to the server, and protected,
through :class:`throttlekit.WSGIMiddleware` first, in-process, with a
:class:`~throttlekit.Limiter` on the chosen storage whose clock is the simulation's. A
:class:`~throttlekit.monitor.Monitor` watches the events and, unless ``--no-shield``, a
:class:`~throttlekit.monitor.Shield` contains the anomaly. The report puts the two runs
side by side: the share of legitimate requests answered within the clients' timeout and
their latency, the share of the attack stopped before the app (by status), the app's
utilisation; then when the anomaly was detected, whom the shield banned, and how much
wall-clock time the middleware added per request.

On a shared store (``--storage redis://...``) the run leaves throttle state behind and
lifts its own bans at the end; point it at a database of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TextIO

from .._errors import ConfigError
from ._output import plain
from ._replay import Replay
from ._report import PROTECTIONS, SimResult, format_report, plot
from .scenarios import BUILTIN, Scenario, load_scenario

__all__ = ["DEFAULT_PROTECTIONS", "PROTECTIONS", "SimResult", "cookie_priority",
           "format_report", "plot", "recommended_rules", "recommended_setup", "register",
           "run_simulation"]

#: paths no legitimate visitor of a typical app asks for
SCANNER_PATHS = (
    "/wp-admin", "/wp-login.php", "/.env", "/.git", "/phpmyadmin", "/cgi-bin", "/admin.php",
    "/xmlrpc.php", "/vendor/phpunit",
)


def recommended_rules(limiter: Any) -> None:
    """The rule set ``simulate`` installs, and the one we recommend starting from.

    - ``per-ip``: every client (IPv4 address or IPv6 /64) gets 20 requests/second in
      bursts and 600/minute sustained: far above a person with a browser (about 1
      request/second with its assets), low enough to cut off a single-source flood;
    - ``login``: 5 attempts per minute per user name on ``POST /login``, whatever the
      address, against password guessing spread over many addresses;
    - ``scanners``: a client that asks for 3 well-known exploit paths within 10 minutes
      is banned for an hour (fail2ban).
    """
    limiter.throttle("per-ip", "20/second; 600/minute", strategy="token_bucket")
    limiter.throttle(
        "login", "5/minute", strategy="sliding_log",
        match=lambda r: r.method == "POST" and r.path == "/login",
        key=lambda r: r.form.get("username") or None,
    )
    limiter.fail2ban(
        "scanners", match=lambda r: r.path.startswith(SCANNER_PATHS),
        maxretry=3, findtime=600, bantime=3600,
    )


#: the protections on by default: challenges are opt-in (``--protections``), since they
#: stop a scenario's clients that keep no cookies, legitimate or not; standing keeps the
#: visitors served through a flash crowd (docs/under-attack.md)
DEFAULT_PROTECTIONS = ("rules", "shield", "admission", "standing")
#: the key the simulated challenge signs its passes with (fixed: runs are deterministic)
SIM_CHALLENGE_KEY = "throttlekit simulate: not a secret, never use it in production"


def cookie_priority(view: Any) -> int:
    """Admission priority 1 for a request carrying a cookie (a browser served before,
    or holding a pass), 0 for the rest: under saturation, clients that keep no cookies
    are shed first."""
    return 1 if view.headers.get("cookie") else 0


def recommended_setup(limiter: Any, monitor: Any,
                      protections: Collection[str] = DEFAULT_PROTECTIONS,
                      *, rules: Callable[[Any], None] = recommended_rules,
                      challenge_key: str = SIM_CHALLENGE_KEY,
                      shield_options: Mapping[str, Any] | None = None) -> Any:
    """What docs/under-attack.md recommends for an attack, as ``simulate`` runs it:
    ``protections`` names the pieces on, from :data:`PROTECTIONS` (by default
    :data:`DEFAULT_PROTECTIONS`).

    - ``rules``: ``rules(limiter)``, by default :func:`recommended_rules`;
    - ``shield``: a :class:`~throttlekit.monitor.Shield` on ``monitor`` with
      ``shield_options`` (returned; else None);
    - ``admission``: ``limiter.admission`` with :func:`cookie_priority`, clients without
      cookies filling at most half the limit (``initial_limit=40``);
    - ``standing``: a :class:`~throttlekit.Standing` switched by ``monitor``: clients with
      10 requests over 30 s before the anomaly are shed last, never challenged, never
      contained;
    - ``challenges``: ``limiter.challenge`` during an anomaly (``when=monitor``), the
      cookie round trip, with ``issue_rate`` raised to 600/minute so that visitors sharing
      one /24 are not kept waiting for passes.
    """
    from ..monitor import Shield

    unknown = set(protections) - set(PROTECTIONS)
    if unknown:
        raise ConfigError(f"unknown protection {sorted(unknown)[0]!r}: expected some of "
                          f"{', '.join(PROTECTIONS)}")
    if "rules" in protections:
        rules(limiter)
    if "challenges" in protections:
        limiter.challenge(key=challenge_key, when=monitor, issue_rate="600/minute")
    if "standing" in protections:
        from .. import Standing

        # known: 10 requests over 30 s before the anomaly (a visitor's first half minute)
        Standing(limiter, when=monitor, min_requests=10, min_age=30.0)
    if "admission" in protections:
        # 40: a cold start's first requests (cookie-less, so at most half the limit) are
        # not shed while the first probe measures the app, on a light load
        # with standing, a level above the cookies': known clients fill the whole limit
        shares = (0.5, 0.6, 1.0) if "standing" in protections else (0.5, 1.0)
        limiter.admission(priority=cookie_priority, thresholds=shares, initial_limit=40)
    if "shield" not in protections:
        return None
    return Shield(limiter, monitor, **(shield_options or {}))


def _legitimate_addresses(scenario: Scenario) -> set[str]:
    """The addresses of the scenario's legitimate clients."""
    return {g.address(c) for g in scenario.groups if g.legitimate for c in range(g.clients)}


def run_simulation(
    scenario: Scenario,
    *,
    storage: str = "memory://",
    shield: bool = True,
    seed: int = 0,
    rules: Callable[[Any], None] = recommended_rules,
    progress: TextIO | None = None,
    shield_options: dict[str, Any] | None = None,
    monitor_options: dict[str, Any] | None = None,
    middleware_options: Mapping[str, Any] | None = None,
    protections: Collection[str] | None = None,
) -> SimResult:
    """Replay ``scenario`` in front of its server, without throttlekit and through
    WSGIMiddleware(app, Limiter(storage), **middleware_options), on simulated time, with
    :func:`recommended_setup`'s ``protections`` (by default :data:`DEFAULT_PROTECTIONS`;
    with ``rules`` of your own, those rules and the shield; ``shield=False`` takes the
    shield out)."""
    from .. import Limiter, WSGIMiddleware
    from ..monitor import Monitor
    from ..testing import FakeClock

    start = 1_700_000_000.0 if storage.startswith("memory:") else float(math.ceil(time.time()))
    clock = FakeClock(start)
    limiter = Limiter(storage, clock=clock)
    if protections is None:
        protections = DEFAULT_PROTECTIONS if rules is recommended_rules else ("rules", "shield")
    on = [p for p in PROTECTIONS if p in protections and (shield or p != "shield")]
    monitor = Monitor(limiter, **(monitor_options or {}))
    guard = recommended_setup(limiter, monitor, on, rules=rules,
                              shield_options=shield_options)
    result = SimResult(scenario.name, storage, guard is not None, scenario.duration,
                       attack_start=scenario.attack_start, attack_end=scenario.attack_end,
                       server=scenario.server, protections=on)
    monitor.on_anomaly(
        lambda a: result.detections.append(a.at - start)
        if a.kind == "anomaly_started" and a.scope == "*" else None
    )
    standing = limiter.engine.standing
    if standing is not None:
        monitor.on_anomaly(lambda a: setattr(result, "known_at_anomaly", len(standing))
                           if result.known_at_anomaly is None and a.scope == "*" else None)
    replay = Replay(scenario, seed, clock, start,
                    lambda app: WSGIMiddleware(app, limiter, **(middleware_options or {})))
    expected = max(1.0, scenario.expected_requests())
    bar = _Progress(progress, scenario.duration) if progress is not None else None
    wall = time.perf_counter()
    n = 0
    for req in scenario.requests(seed):
        replay.arrive(req)
        n += 1
        if bar is not None and n % 1000 == 0:
            bar.update(req.t, n, expected)
    replay.finish()
    result.wall_seconds = time.perf_counter() - wall
    if bar is not None:
        bar.finish(n)
    monitor.tick(max(clock.now, start + scenario.duration))
    result.added = sorted(replay.added)
    result.measured(replay.protected, replay.unprotected)
    legit = [i for i, g in enumerate(scenario.groups) if g.legitimate]
    result.legit_groups = legit if len(legit) > 1 else []
    if guard is not None:
        result.banned = len(guard.banned)
        addresses = _legitimate_addresses(scenario)
        result.legit_banned = sorted(str(k) for k in guard.banned if k in addresses)
        result.contained = dict(guard.containments_total)
        if not storage.startswith("memory:"):
            guard.unban()  # leave a shared store as we found it
    return result


class _Progress:
    """A one-line progress bar on a terminal stream."""

    def __init__(self, stream: TextIO, duration: float) -> None:
        self.stream = stream
        self.duration = duration
        self.started = time.monotonic()
        self.shown = -1

    def update(self, t: float, n: int, expected: float) -> None:
        share = min(1.0, t / self.duration)
        if int(share * 100) == self.shown:
            return
        self.shown = int(share * 100)
        filled = int(share * 30)
        elapsed = time.monotonic() - self.started
        eta = elapsed / share - elapsed if share > 0 else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}  t={t:5.0f}s  "
            f"{n:,} requests  eta {eta:3.0f}s "
        )
        self.stream.flush()

    def finish(self, n: int) -> None:
        self.stream.write(f"\r{' ' * 78}\r")
        self.stream.flush()


# -- the command ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``simulate`` to the command line."""
    p = subparsers.add_parser(
        "simulate",
        help="replay an attack scenario through the middleware on simulated time",
        description=plain(__doc__.split("\n\n")[1]) if __doc__ else None,
    )
    p.add_argument(
        "scenario", nargs="?", default="default",
        help=f"a built-in scenario ({', '.join(BUILTIN)}) or a scenario .toml file "
        "(default: default)",
    )
    p.add_argument("--storage", default="memory://", help="storage URL (default: memory://)")
    p.add_argument("--protections", type=_protections, default=DEFAULT_PROTECTIONS,
                   metavar="LIST",
                   help="the protections of the protected run, comma-separated, from "
                   f"{','.join(PROTECTIONS)} (default: {','.join(DEFAULT_PROTECTIONS)}; "
                   "'none': the monitor only)")
    for name, what in (("shield", "monitor only: no automatic bans"),
                       ("admission", "no admission control"),
                       ("standing", "no client standing"),
                       ("challenges", "no challenges during an anomaly")):
        p.add_argument(f"--no-{name}", dest="off", action="append_const", const=name,
                       default=[], help=f"{what} (take {name} out of --protections)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--duration", type=float, help="override the scenario's duration (seconds)")
    p.add_argument("--scale", type=float,
                   help="multiply every group's clients and the server's workers and queue "
                   "(0.25: a quicker run of the same proportions)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw requests/s by outcome (needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the built-in scenarios and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log anomalies and every shield action on stderr")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar on stderr (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_command)


def _protections(text: str) -> tuple[str, ...]:
    """``--protections``: names from :data:`PROTECTIONS`, comma-separated, or ``none``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in PROTECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown protection {unknown[0]!r} (expected some of {', '.join(PROTECTIONS)}, "
            "or none)")
    return tuple(names)


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """Verbose: throttlekit's log records on stderr, one line each; otherwise only errors."""
    log = logging.getLogger("throttlekit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.ERROR)
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.ERROR)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def run_command(args: argparse.Namespace) -> int:
    """``throttlekit simulate``."""
    if args.list:
        for name, s in BUILTIN.items():
            print(f"{name:14s} {s.description}")
        return 0
    scenario = load_scenario(args.scenario)
    if args.duration is not None:
        from dataclasses import replace

        start = scenario.attack_start
        if start is not None and args.duration <= start:  # said in the report's header too
            print(f"throttlekit simulate: warning: --duration {args.duration:g} ends before "
                  f"the attack of scenario {scenario.name!r} starts (t={start:g}s): this run "
                  f"has no attack; give a duration above {start:g} to see one",
                  file=sys.stderr)
        scenario = replace(scenario, duration=args.duration)
    if args.scale is not None:
        scenario = scenario.scaled(args.scale)
    if args.plot:
        try:
            import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--plot needs matplotlib: pip install 'throttlekit-web[plot]'"
            ) from None
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    with _logging(args.verbose):
        result = run_simulation(
            scenario, storage=args.storage, seed=args.seed,
            protections=[p for p in args.protections if p not in args.off],
            progress=None if args.verbose or not show else sys.stderr,
        )
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result, scenario))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``throttlekit simulate ...`` as a function (for tests and scripts)."""
    from . import main as cli_main

    return cli_main(["simulate", *(argv or [])])
