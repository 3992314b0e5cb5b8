"""``throttlekit simulate``: replay an attack through the real middleware, on simulated time.

The scenario's requests (see :mod:`throttlekit.cli.scenarios`) are built as WSGI environs
with ``REMOTE_ADDR`` set and called in-process through :class:`throttlekit.WSGIMiddleware`
around a tiny app, with a :class:`~throttlekit.Limiter` on the chosen storage whose clock
is the simulation's clock. A :class:`~throttlekit.monitor.Monitor` watches the events and,
unless ``--no-shield``, a :class:`~throttlekit.monitor.Shield` contains the anomaly. The
report says what share of legitimate requests were served, what share of the attack was
refused, when the anomaly was detected, and how much wall-clock time the middleware added
per request.

On a shared store (``--storage redis://...``) the run leaves throttle state behind and
lifts its own bans at the end; point it at a database of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .._errors import ConfigError
from .scenarios import BUILTIN, Request, Scenario, load_scenario

__all__ = ["SimResult", "recommended_rules", "register", "run_simulation"]

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


@dataclass
class SimResult:
    """What a simulation measured."""

    scenario: str
    storage: str
    shield: bool
    duration: float
    legit_total: int = 0
    legit_served: int = 0
    attack_total: int = 0
    attack_refused: int = 0
    attack_start: float | None = None
    #: simulated seconds from the start of the run to each anomaly_started on all traffic
    detections: list[float] = field(default_factory=list)
    banned: int = 0
    legit_banned: list[str] = field(default_factory=list)
    #: wall-clock seconds the middleware added per request (sorted)
    added: list[float] = field(default_factory=list)
    #: per simulated second: [legit served, legit refused, attack served, attack refused]
    timeline: list[list[int]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def legit_served_share(self) -> float:
        return self.legit_served / self.legit_total if self.legit_total else 1.0

    @property
    def attack_refused_share(self) -> float:
        return self.attack_refused / self.attack_total if self.attack_total else 1.0

    @property
    def detected_after(self) -> float | None:
        """Simulated seconds from the attack's start to its detection (None: not detected)."""
        if self.attack_start is None:
            return None
        for t in self.detections:
            if t >= self.attack_start:
                return t - self.attack_start
        return None

    @property
    def false_alarms(self) -> int:
        """Anomalies raised before any attack."""
        start = math.inf if self.attack_start is None else self.attack_start
        return sum(1 for t in self.detections if t < start)

    def latency(self, q: float) -> float:
        """The ``q`` quantile of the added latency, seconds."""
        if not self.added:
            return 0.0
        return self.added[min(len(self.added) - 1, int(q * len(self.added)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "storage": self.storage,
            "shield": self.shield,
            "simulated_seconds": self.duration,
            "wall_seconds": round(self.wall_seconds, 3),
            "legitimate": {
                "requests": self.legit_total, "served": self.legit_served,
                "served_share": round(self.legit_served_share, 6),
            },
            "attack": {
                "requests": self.attack_total, "refused": self.attack_refused,
                "refused_share": round(self.attack_refused_share, 6),
                "start": self.attack_start,
            },
            "anomaly": {
                "detected_after": self.detected_after,
                "detections": self.detections,
                "false_alarms": self.false_alarms,
            },
            "shield_bans": {"total": self.banned, "legitimate": self.legit_banned},
            "added_latency_us": {
                "median": round(self.latency(0.5) * 1e6, 2),
                "p99": round(self.latency(0.99) * 1e6, 2),
            },
            "timeline": self.timeline,
        }


def _app_factory() -> tuple[Callable[..., Iterable[bytes]], list[float]]:
    """A tiny WSGI app that measures its own time (so it can be subtracted)."""
    spent = [0.0]
    perf = time.perf_counter
    body = [b"ok"]
    headers = [("Content-Type", "text/plain"), ("Content-Length", "2")]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t = perf()
        start_response("200 OK", headers)
        spent[0] = perf() - t
        return body

    return app, spent


def _environ(req: Request) -> dict[str, Any]:
    """The WSGI environ of one simulated request."""
    environ = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": req.path,
        "QUERY_STRING": "",
        "SERVER_NAME": "sim.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": req.address,
        "HTTP_HOST": "sim.test",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if req.body:
        environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        environ["CONTENT_LENGTH"] = str(len(req.body))
    for k, v in req.headers:
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    return environ


def _count(result: SimResult, req: Request, served: bool) -> None:
    """Count one request's outcome in the totals and its second of the timeline."""
    timeline = result.timeline
    second = int(req.t)
    while len(timeline) <= second:
        timeline.append([0, 0, 0, 0])
    if req.legitimate:
        result.legit_total += 1
        result.legit_served += served
        timeline[second][0 if served else 1] += 1
    else:
        result.attack_total += 1
        result.attack_refused += not served
        timeline[second][2 if served else 3] += 1


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
) -> SimResult:
    """Replay ``scenario`` through WSGIMiddleware + Limiter(storage) on simulated time."""
    from .. import Limiter, WSGIMiddleware
    from ..monitor import Monitor, Shield
    from ..testing import FakeClock

    start = 1_700_000_000.0 if storage.startswith("memory:") else float(math.ceil(time.time()))
    clock = FakeClock(start)
    limiter = Limiter(storage, clock=clock)
    rules(limiter)
    monitor = Monitor(limiter, **(monitor_options or {}))
    guard = Shield(limiter, monitor, **(shield_options or {})) if shield else None
    result = SimResult(scenario.name, storage, shield, scenario.duration,
                       attack_start=scenario.attack_start)
    monitor.on_anomaly(
        lambda a: result.detections.append(a.at - start)
        if a.kind == "anomaly_started" and a.scope == "*" else None
    )
    app, app_time = _app_factory()
    mw = WSGIMiddleware(app, limiter)
    status = [""]

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        status[0] = s
        return lambda data: None

    added = result.added
    perf = time.perf_counter
    expected = max(1.0, scenario.expected_requests())
    bar = _Progress(progress, scenario.duration) if progress is not None else None
    wall = perf()
    n = 0
    for req in scenario.requests(seed):
        clock.now = start + req.t
        environ = _environ(req)
        app_time[0] = 0.0
        t0 = perf()
        body = mw(environ, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        added.append(perf() - t0 - app_time[0])
        _count(result, req, status[0].startswith("2"))
        n += 1
        if bar is not None and n % 1000 == 0:
            bar.update(req.t, n, expected)
    result.wall_seconds = perf() - wall
    if bar is not None:
        bar.finish(n)
    monitor.tick(start + scenario.duration)
    added.sort()
    if guard is not None:
        result.banned = len(guard.banned)
        legit = _legitimate_addresses(scenario)
        result.legit_banned = sorted(str(k) for k in guard.banned if k in legit)
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


def format_report(r: SimResult, scenario: Scenario) -> str:
    """The human-readable report."""
    legit_clients = sum(g.clients for g in scenario.groups if g.legitimate)
    attack_clients = sum(g.clients for g in scenario.groups if not g.legitimate)
    lines = [
        f"scenario {r.scenario}: {scenario.description or ''}".rstrip(": "),
        f"  {legit_clients} legitimate clients, {attack_clients} attacking, "
        f"{r.duration:g} simulated seconds on {r.storage}, shield {'on' if r.shield else 'off'}",
        "",
        f"legitimate requests served  {r.legit_served_share:8.2%}  "
        f"({r.legit_served:,} of {r.legit_total:,})",
    ]
    if r.attack_total:
        lines.append(
            f"attack requests refused     {r.attack_refused_share:8.2%}  "
            f"({r.attack_refused:,} of {r.attack_total:,})"
        )
    after = r.detected_after
    if r.attack_start is not None:
        if after is None:
            lines.append("anomaly detected            no")
        else:
            lines.append(
                f"anomaly detected            {after:6.1f} s after the attack started "
                f"(t={r.attack_start + after:.1f}s)"
            )
    if r.false_alarms:
        lines.append(f"false alarms                {r.false_alarms:6d}  (before the attack)")
    if r.shield:
        lines.append(
            f"shield bans                 {r.banned:6d}  "
            f"({len(r.legit_banned)} of them legitimate clients)"
        )
    lines.append(
        f"latency added               median {r.latency(0.5) * 1e6:.1f} µs, "
        f"p99 {r.latency(0.99) * 1e6:.1f} µs per request (wall clock)"
    )
    lines.append(f"  ({len(r.added):,} requests in {r.wall_seconds:.1f} s of wall-clock time)")
    return "\n".join(lines)


def plot(r: SimResult, path: str) -> None:
    """Draw requests per second by outcome over time into ``path`` (needs matplotlib)."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'throttlekit-web[plot]'"
        ) from None
    seconds = list(range(len(r.timeline)))
    series = list(zip(*r.timeline, strict=True)) if r.timeline else [(), (), (), ()]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.stackplot(
        seconds, *series,
        labels=["legitimate, served", "legitimate, refused", "attack, served", "attack, refused"],
        colors=["#2b8a3e", "#f59f00", "#e03131", "#868e96"],
    )
    if r.attack_start is not None:
        ax.axvline(r.attack_start, color="black", linestyle=":", label="attack starts")
    after = r.detected_after
    if after is not None and r.attack_start is not None:
        ax.axvline(r.attack_start + after, color="#1971c2", linestyle="--",
                   label="anomaly detected")
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("requests per second")
    ax.set_title(f"throttlekit simulate {r.scenario} ({'shield on' if r.shield else 'shield off'})")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``simulate`` to the command line."""
    p = subparsers.add_parser(
        "simulate",
        help="replay an attack scenario through the middleware on simulated time",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "scenario", nargs="?", default="default",
        help=f"a built-in scenario ({', '.join(BUILTIN)}) or a scenario .toml file "
        "(default: default)",
    )
    p.add_argument("--storage", default="memory://", help="storage URL (default: memory://)")
    p.add_argument("--no-shield", dest="shield", action="store_false",
                   help="monitor only: no automatic bans")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--duration", type=float, help="override the scenario's duration (seconds)")
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

        scenario = replace(scenario, duration=args.duration)
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
            scenario, storage=args.storage, shield=args.shield, seed=args.seed,
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
