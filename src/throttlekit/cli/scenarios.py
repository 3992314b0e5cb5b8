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
"""

from __future__ import annotations

import ipaddress
import math
import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError

__all__ = ["BUILTIN", "ClientGroup", "Request", "Scenario", "load_scenario"]


@dataclass(frozen=True)
class Request:
    """One request of a scenario."""

    t: float  # simulated seconds from the start
    group: int  # index of the group
    client: int  # client number within the group
    address: str
    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    legitimate: bool


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

    def address(self, client: int) -> str:
        """The address of client number ``client``."""
        net = ipaddress.ip_network(self.addresses, strict=False)
        offset = 1 if net.num_addresses > self.clients + 1 else 0  # skip the network address
        return str(net.network_address + offset + client)


@dataclass(frozen=True)
class Scenario:
    """A named duration and its client groups."""

    name: str
    duration: float
    groups: tuple[ClientGroup, ...]
    description: str = ""

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

    def requests(self, seed: int = 0) -> Iterator[Request]:
        """Every request in time order (deterministic for a seed)."""
        import heapq

        rng = random.Random(seed)
        heap: list[tuple[float, int, int, int]] = []
        seq = 0
        groups = self.groups
        addresses: list[list[str]] = []
        for gi, g in enumerate(groups):
            addresses.append([g.address(c) for c in range(g.clients)])
            period = 1.0 / g.rate
            for c in range(g.clients):
                heap.append((g.start + rng.random() * period, seq, gi, c))
                seq += 1
        heapq.heapify(heap)
        parsed = [[_split_path(p, g.name) for p in g.paths] for g in groups]
        ends = [self.duration if g.end is None else min(g.end, self.duration) for g in groups]
        n = 0
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            t, _, gi, c = pop(heap)
            g = groups[gi]
            if t >= ends[gi]:
                continue
            method, path = rng.choice(parsed[gi])
            body = b""
            if method in ("POST", "PUT", "PATCH") and g.form:
                from urllib.parse import urlencode

                body = urlencode(
                    {k: v.format(client=c, n=n) for k, v in g.form.items()}
                ).encode()
            headers = tuple((k, v.format(client=c, n=n)) for k, v in g.headers.items())
            yield Request(t, gi, c, addresses[gi][c], method, path, body, headers, g.legitimate)
            n += 1
            period = 1.0 / g.rate
            jitter = g.jitter
            if jitter == "poisson":
                gap = rng.expovariate(g.rate)
            elif isinstance(jitter, (int, float)) and jitter:
                gap = period * (1.0 + jitter * (2.0 * rng.random() - 1.0))
            else:
                gap = period
            push(heap, (t + max(gap, 1e-6), seq, gi, c))
            seq += 1

    def expected_requests(self) -> float:
        """About how many requests the scenario sends."""
        total = 0.0
        for g in self.groups:
            end = self.duration if g.end is None else min(g.end, self.duration)
            total += g.clients * g.rate * max(0.0, end - g.start)
        return total


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _split_path(spec: str, where: str) -> tuple[str, str]:
    method, _, path = spec.partition(" ") if " " in spec else ("GET", "", spec)
    method = method.upper()
    if not path.startswith("/") or not method.isalpha():
        raise ConfigError(f"{where}: bad path {spec!r} (expected '/path' or 'METHOD /path')")
    return method, path


# -- built-in scenarios -----------------------------------------------------------------

_LEGIT_PATHS = ("/", "/products", "/products/42", "/api/items", "/cart", "/search")


def _visitors(**kw: Any) -> ClientGroup:
    options: dict[str, Any] = dict(
        name="visitors", clients=200, rate=1.0, jitter=0.5, paths=_LEGIT_PATHS,
        addresses="10.1.0.0/16", headers={"User-Agent": "Mozilla/5.0 (visitor {client})"},
    )
    options.update(kw)
    return ClientGroup(**options)


BUILTIN: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "default",
            240.0,
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
            "single-source",
            240.0,
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
            "distributed",
            240.0,
            (
                _visitors(),
                ClientGroup(
                    "botnet", clients=5000, rate=0.4, jitter="poisson", start=60.0, end=180.0,
                    paths=("/search",), addresses="100.64.0.0/16", legitimate=False,
                ),
            ),
            "200 visitors; from t=60s to t=180s 5000 addresses, each slower than a visitor "
            "(0.4 req/s), together 10x the legitimate volume on /search",
        ),
        Scenario(
            "brute-force",
            240.0,
            (
                _visitors(),
                ClientGroup(
                    "members", clients=50, rate=1 / 30, jitter=0.5, paths=("POST /login",),
                    addresses="10.2.0.0/16", form={"username": "user{client}",
                                                   "password": "hunter2"},
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
            "scanner",
            240.0,
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
}


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
    "legitimate", "form", "headers",
}


def scenario_from_dict(data: Mapping[str, Any], default_name: str = "scenario") -> Scenario:
    """Build a Scenario from parsed TOML (see the module docstring)."""
    unknown = set(data) - {"name", "description", "duration", "clients"}
    if unknown:
        raise ConfigError(f"unknown scenario setting(s): {', '.join(sorted(unknown))}")
    raw_groups = data.get("clients")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise ConfigError("a scenario needs at least one [[clients]] group")
    groups = []
    for i, raw in enumerate(raw_groups):
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
        if "paths" in g:
            if not isinstance(g["paths"], list):
                raise ConfigError(f"client group {name!r}: paths must be a list")
            g["paths"] = tuple(g["paths"])
        groups.append(ClientGroup(**g))
    return Scenario(
        str(data.get("name", default_name)),
        data.get("duration", max((g.end or 0.0) for g in groups) or 60.0),
        tuple(groups),
        str(data.get("description", "")),
    )
