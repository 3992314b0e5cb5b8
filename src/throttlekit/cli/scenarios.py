"""Traffic scenarios for ``throttlekit simulate``: built-in ones and a TOML file format.

A scenario is a duration and groups of clients. Each client of a group sends requests at
``rate`` per second (or the group together at ``total_rate``), from ``start`` to ``end``
seconds, with gaps spread by ``jitter``, to paths picked at random from ``paths``, from
consecutive addresses of the ``addresses`` network. ``legitimate = false`` marks the
attack, which the report measures separately. A TOML file::

    name = "my-flood"
    description = "Checkout flood from one /16"
    duration = 240                      # simulated seconds

    [[clients]]
    name = "visitors"
    clients = 200
    rate = 1.0                          # requests per second, per client
    jitter = 0.5                        # gaps uniform in +-50%; 0: fixed; "poisson"
    paths = ["/", "/products", "POST /login"]
    addresses = "10.1.0.0/16"
    form = { username = "user{client}", password = "secret" }   # for POST requests

    [[clients]]
    name = "flood"
    legitimate = false
    clients = 500
    total_rate = 2000                   # the whole group, requests per second
    start = 60
    end = 180
    paths = ["/checkout"]
    addresses = "198.18.0.0/15"
    headers = { "User-Agent" = "flood/1.0" }

``{client}`` in a form value or header is the client's number within its group, ``{n}``
the request's number.

What real floods and real users do differently (each optional; the defaults are the
plain clients above)::

    cookies = true                      # keep the cookies answers set, send them back
    follows_challenge = true            # follow a challenge (a redirect setting a pass
                                        # cookie, a proof-of-work page) as a browser does
    user_agent = "rotate"               # a fresh browser user agent per request (or a
                                        # template: "bot/{client}")
    query = "random"                    # a fresh query string per request (or a template)
    arrive = 60                         # clients arrive over 60 s after start, not at once
    pulse = [10, 20]                    # on 10 s, off 20 s, from start
    spread = true                       # addresses spread evenly over the network

The server behind the app (without it, unlimited capacity and no service time)::

    [server]
    workers = 24                        # requests served at once
    queue = 100                         # waiting beyond this: dropped (503 from the server)
    timeout = 5                         # seconds a client waits; later counts as failed
    [server.service]                    # seconds per request, by path ("*": the rest)
    "/search" = { median = 0.2, p90 = 0.4 }   # lognormal, seeded
    "*" = { median = 0.02, p90 = 0.04 }
"""

from __future__ import annotations

import ipaddress
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import ConfigError
from . import _traffic
from ._server import ServerSpec, ServiceTime
from ._traffic import Request

__all__ = ["BUILTIN", "ClientGroup", "Request", "Scenario", "ServerSpec", "load_scenario"]


@dataclass(frozen=True)
class ClientGroup:
    """Clients that behave alike. See the module docstring for the fields."""

    name: str
    clients: int
    rate: float
    jitter: float | str = 0.5
    start: float = 0.0
    end: float | None = None
    paths: tuple[str, ...] = ("/",)
    addresses: str = "10.0.0.0/8"
    legitimate: bool = True
    form: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: bool = False
    follows_challenge: bool = False
    user_agent: str | None = None
    query: str | None = None
    arrive: float = 0.0
    pulse: tuple[float, float] | None = None
    spread: bool = False

    def __post_init__(self) -> None:
        where = f"client group {self.name!r}"
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or self.clients < 1:
            raise ConfigError(f"{where}: clients must be a positive integer, got {self.clients!r}")
        if not _number(self.rate) or not self.rate > 0:
            raise ConfigError(f"{where}: rate must be a positive number, got {self.rate!r}")
        j = self.jitter
        if j != "poisson" and not (isinstance(j, (int, float)) and _number(j) and 0 <= j <= 1):
            raise ConfigError(
                f"{where}: jitter must be between 0 and 1, or \"poisson\", got {self.jitter!r}"
            )
        if not _number(self.start) or self.start < 0:
            raise ConfigError(f"{where}: start must be a number >= 0, got {self.start!r}")
        if self.end is not None and (not _number(self.end) or self.end <= self.start):
            raise ConfigError(f"{where}: end must be a number after start, got {self.end!r}")
        if not self.paths or not all(isinstance(p, str) and p for p in self.paths):
            raise ConfigError(f"{where}: paths must be a non-empty list of strings")
        for p in self.paths:
            _split_path(p, where)
        self._check_behaviour(where)
        try:
            net = ipaddress.ip_network(self.addresses, strict=False)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: bad addresses {self.addresses!r}") from None
        if net.num_addresses < self.clients:
            raise ConfigError(
                f"{where}: {self.addresses} has fewer addresses than {self.clients} clients"
            )
        for what, m in (("form", self.form), ("headers", self.headers)):
            if not isinstance(m, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in m.items()
            ):
                raise ConfigError(f"{where}: {what} must map strings to strings")

    def _check_behaviour(self, where: str) -> None:
        """The options of real floods and real users (see the module docstring)."""
        for what in ("cookies", "follows_challenge", "spread"):
            if not isinstance(getattr(self, what), bool):
                raise ConfigError(f"{where}: {what} must be true or false")
        for what in ("user_agent", "query"):
            if getattr(self, what) is not None and not isinstance(getattr(self, what), str):
                raise ConfigError(f"{where}: {what} must be a string")
        if not _number(self.arrive) or self.arrive < 0:
            raise ConfigError(f"{where}: arrive must be a number >= 0, got {self.arrive!r}")
        pulse = self.pulse
        if pulse is not None and not (
            isinstance(pulse, tuple) and len(pulse) == 2 and all(_number(x) for x in pulse)
            and pulse[0] > 0 and pulse[1] >= 0
        ):
            raise ConfigError(
                f"{where}: pulse must be [seconds on, seconds off], on > 0, got {pulse!r}"
            )

    def address(self, client: int) -> str:
        """The address of client number ``client``: consecutive hosts of the network, or
        with ``spread``, hosts spread evenly over it."""
        net = ipaddress.ip_network(self.addresses, strict=False)
        offset = 1 if net.num_addresses > self.clients + 1 else 0  # skip the network address
        step = (net.num_addresses - offset) // self.clients if self.spread else 1
        return str(net.network_address + offset + client * step)


@dataclass(frozen=True)
class Scenario:
    """A named duration and its client groups."""

    name: str
    duration: float
    groups: tuple[ClientGroup, ...]
    description: str = ""
    server: ServerSpec = field(default_factory=ServerSpec)

    def __post_init__(self) -> None:
        if not _number(self.duration) or not self.duration > 0:
            raise ConfigError(f"scenario duration must be a positive number, got {self.duration!r}")
        if not self.groups:
            raise ConfigError(f"scenario {self.name!r} has no client groups")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ConfigError(f"scenario {self.name!r}: client group names must be unique")

    @property
    def attack_start(self) -> float | None:
        """When the first attacking group starts (None without attack)."""
        starts = [g.start for g in self.groups if not g.legitimate]
        return min(starts) if starts else None

    @property
    def attack_end(self) -> float | None:
        """When the last attacking group stops (None without attack)."""
        ends = [self.duration if g.end is None else min(g.end, self.duration)
                for g in self.groups if not g.legitimate]
        return max(ends) if ends else None

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with ``factor`` times the clients of every group and the
        server's workers and queue (each client and request as before): a quicker run
        of the same proportions."""
        if not _number(factor) or not factor > 0:
            raise ConfigError(f"scale must be a positive number, got {factor!r}")
        groups = tuple(replace(g, clients=max(1, round(g.clients * factor)))
                       for g in self.groups)
        spec = self.server
        server = replace(
            spec,
            workers=None if spec.workers is None else max(1, round(spec.workers * factor)),
            queue=None if spec.queue is None else round(spec.queue * factor),
        )
        return replace(self, groups=groups, server=server)

    def requests(self, seed: int = 0) -> Iterator[Request]:
        """Every request in time order (deterministic for a seed)."""
        return _traffic.requests(self.groups, self.duration, seed)

    def expected_requests(self) -> float:
        """About how many requests the scenario sends."""
        total = 0.0
        for g in self.groups:
            end = self.duration if g.end is None else min(g.end, self.duration)
            seconds = max(0.0, end - g.start - g.arrive / 2)
            if g.pulse is not None:
                seconds *= g.pulse[0] / (g.pulse[0] + g.pulse[1])
            total += g.clients * g.rate * seconds
        return total

    def load(self, legitimate: bool = True) -> float:
        """The workers the legitimate (or attacking) clients keep busy on average, all
        sending: requests per second times the mean service time of their paths."""
        busy = 0.0
        for g in self.groups:
            if g.legitimate == legitimate:
                paths = [_split_path(p, g.name)[1] for p in g.paths]
                service = sum(self.server.service_time(p).mean for p in paths) / len(paths)
                busy += g.clients * g.rate * service
        return busy


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _split_path(spec: str, where: str) -> tuple[str, str]:
    found = _traffic.split_path(spec)
    if found is None:
        raise ConfigError(f"{where}: bad path {spec!r} (expected '/path' or 'METHOD /path')")
    return found


# -- built-in scenarios -----------------------------------------------------------------

_LEGIT_PATHS = ("/", "/products", "/products/42", "/api/items", "/cart", "/search")


def _visitors(**kw: Any) -> ClientGroup:
    """People with browsers: about one request a second each, keeping cookies."""
    options: dict[str, Any] = dict(
        name="visitors", clients=200, rate=1.0, jitter=0.5, paths=_LEGIT_PATHS,
        addresses="10.1.0.0/16", headers={"User-Agent": "Mozilla/5.0 (visitor {client})"},
        cookies=True, follows_challenge=True,
    )
    options.update(kw)
    return ClientGroup(**options)


def _server() -> ServerSpec:
    """The built-in scenarios' server: an expensive /search, cheap pages, and workers for
    twice the load of the 200 visitors (24: they keep 11.6 busy on average)."""
    service = (("/search", ServiceTime(0.2, 0.4)), ("*", ServiceTime(0.02, 0.04)))
    visitors = Scenario("visitors", 1.0, (_visitors(),), server=ServerSpec(service=service))
    return ServerSpec(math.ceil(2 * visitors.load()), queue=100, timeout=5.0, service=service)


def _newcomers(name: str, clients: int, **kw: Any) -> ClientGroup:
    """Visitors new to the site, from addresses all over a /9."""
    return _visitors(name=name, clients=clients, addresses="10.128.0.0/9", spread=True,
                     headers={"User-Agent": "Mozilla/5.0 (new visitor {client})"}, **kw)


def _botnet(**kw: Any) -> ClientGroup:
    """5,000 addresses each slower than a visitor, together 10x the visitors' volume."""
    options: dict[str, Any] = dict(
        name="botnet", clients=5000, rate=0.4, jitter="poisson", start=60.0, end=180.0,
        paths=("/search",), addresses="100.64.0.0/16", legitimate=False,
    )
    options.update(kw)
    return ClientGroup(**options)


_SCENARIOS = (
    Scenario(
        "default", 240.0,
        (
            _visitors(),
            ClientGroup(
                "flood", clients=500, rate=2000 / 500, jitter=0.5, start=60.0, end=180.0,
                paths=("/", "/products", "/search"), addresses="198.18.0.0/16",
                legitimate=False, headers={"User-Agent": "Mozilla/5.0"},
            ),
        ),
        "200 visitors at about 1 req/s each; from t=60s to t=180s a flood from 500 "
        "addresses sending 10x the legitimate volume",
    ),
    Scenario(
        "single-source", 240.0,
        (
            _visitors(),
            ClientGroup(
                "flood", clients=1, rate=2000.0, jitter=0.5, start=60.0, end=180.0,
                paths=("/", "/search"), addresses="203.0.113.7/32", legitimate=False,
            ),
        ),
        "200 visitors; from t=60s to t=180s one address sends 2000 req/s",
    ),
    Scenario(
        "distributed", 240.0, (_visitors(), _botnet()),
        "200 visitors; from t=60s to t=180s 5000 addresses, each slower than a visitor "
        "(0.4 req/s), together 10x the legitimate volume on /search",
    ),
    Scenario(
        "rotating-ua", 240.0,
        (
            _visitors(),
            _botnet(name="flood", clients=3000, rate=2000 / 3000, addresses="172.16.0.0/12",
                    spread=True, user_agent="rotate"),
        ),
        "200 visitors; from t=60s to t=180s 3000 addresses spread over a /12, a fresh "
        "browser user agent per request, together 10x the legitimate volume on /search",
    ),
    Scenario(
        "flash-crowd", 240.0,
        (
            _visitors(),
            _newcomers("crowd", 2000, start=60.0, end=180.0, arrive=10.0),
        ),
        "200 visitors; from t=60s 2000 new visitors arrive within 10 s and browse like "
        "them until t=180s (10x the usual volume, no attack)",
    ),
    Scenario(
        "new-visitors", 240.0,
        (
            _visitors(),
            _botnet(),
            _newcomers("newcomers", 100, start=60.0, arrive=110.0),
        ),
        "the distributed flood (t=60s to t=180s) while 100 new visitors arrive, spread "
        "over t=60s to t=170s, and browse until the end",
    ),
    Scenario(
        "brute-force", 240.0,
        (
            _visitors(),
            ClientGroup(
                "members", clients=50, rate=1 / 30, jitter=0.5, paths=("POST /login",),
                addresses="10.2.0.0/16", form={"username": "user{client}",
                                               "password": "hunter2"},
                cookies=True, follows_challenge=True,
            ),
            ClientGroup(
                "guessers", clients=20, rate=5.0, jitter=0.5, start=60.0, end=180.0,
                paths=("POST /login",), addresses="192.0.2.0/24", legitimate=False,
                form={"username": "admin", "password": "guess{n}"},
            ),
        ),
        "200 visitors and 50 members logging in every 30 s or so; from t=60s, 20 "
        "addresses guess the admin password at 5 req/s each",
    ),
    Scenario(
        "scanner", 240.0,
        (
            _visitors(),
            ClientGroup(
                "scanners", clients=50, rate=2.0, jitter=0.5, start=60.0, end=180.0,
                paths=("/wp-admin/", "/wp-login.php", "/.env", "/phpmyadmin/",
                       "/.git/config", "/admin.php", "/cgi-bin/test.cgi"),
                addresses="192.0.2.0/24", legitimate=False,
                headers={"User-Agent": "Mozilla/5.0 zgrab/0.x"},
            ),
        ),
        "200 visitors; from t=60s, 50 addresses probe for admin pages and secrets",
    ),
)

#: the built-in scenarios, each with the server of :func:`_server`
_SERVER = _server()
BUILTIN: dict[str, Scenario] = {s.name: replace(s, server=_SERVER) for s in _SCENARIOS}


def load_scenario(spec: str) -> Scenario:
    """A built-in scenario by name, or a scenario read from a TOML file path."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if not spec.endswith(".toml"):
        raise ConfigError(
            f"unknown scenario {spec!r}: expected one of {', '.join(BUILTIN)} or a .toml file"
        )
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading scenario files on Python 3.10 needs 'tomli'") from None
    try:
        with open(spec, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read scenario file {spec!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario file {spec!r} is not valid TOML: {exc}") from None
    return scenario_from_dict(data, default_name=spec)


_GROUP_KEYS = {
    "name", "clients", "rate", "total_rate", "jitter", "start", "end", "paths", "addresses",
    "legitimate", "form", "headers", "cookies", "follows_challenge", "user_agent", "query",
    "arrive", "pulse", "spread",
}


def scenario_from_dict(data: Mapping[str, Any], default_name: str = "scenario") -> Scenario:
    """Build a Scenario from parsed TOML (see the module docstring)."""
    unknown = set(data) - {"name", "description", "duration", "clients", "server"}
    if unknown:
        raise ConfigError(f"unknown scenario setting(s): {', '.join(sorted(unknown))}")
    raw_groups = data.get("clients")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise ConfigError("a scenario needs at least one [[clients]] group")
    groups = [_group_from_dict(i, raw) for i, raw in enumerate(raw_groups)]
    return Scenario(
        str(data.get("name", default_name)),
        data.get("duration", max((g.end or 0.0) for g in groups) or 60.0),
        tuple(groups),
        str(data.get("description", "")),
        ServerSpec.from_dict(data["server"]) if "server" in data else ServerSpec(),
    )


def _group_from_dict(i: int, raw: object) -> ClientGroup:
    """``[[clients]]`` number ``i``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[[clients]] #{i + 1} must be a table")
    g = dict(raw)
    name = g.setdefault("name", f"group{i + 1}")
    unknown = set(g) - _GROUP_KEYS
    if unknown:
        raise ConfigError(
            f"client group {name!r}: unknown setting(s) {', '.join(sorted(unknown))}"
        )
    if "total_rate" in g:
        if "rate" in g:
            raise ConfigError(f"client group {name!r}: give rate or total_rate, not both")
        total = g.pop("total_rate")
        if not _number(total) or total <= 0:
            raise ConfigError(f"client group {name!r}: total_rate must be a positive number")
        g["rate"] = total / g.get("clients", 1) if _number(g.get("clients")) else total
    g.setdefault("clients", 1)
    if "rate" not in g:
        raise ConfigError(f"client group {name!r}: rate (or total_rate) is required")
    for what in ("paths", "pulse"):
        if what in g:
            if not isinstance(g[what], list):
                raise ConfigError(f"client group {name!r}: {what} must be a list")
            g[what] = tuple(g[what])
    return ClientGroup(**g)
