"""Attribution against traffic models: which dimension and values explain a surge.

A model site: ordinary visitors spread over many networks, browsers (user agent, header
order, Accept-Language, cookies) and paths, each a Poisson source at a user's rate. A
surge is added on top, explained by one user agent, one /16, one path or one header
fingerprint, among decoys that rise a little or are large but normal; attribution must
name the right one. A flash crowd (new visitors behaving like the usual ones) must be
attributed to nothing narrower than everything. Requests run through the real WSGI
middleware on an injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter, RequestView, WSGIMiddleware
from throttlekit._clientip import ClientIPResolver
from throttlekit.monitor import DIMENSIONS, Attribution, Monitor
from throttlekit.monitor._features import MAX_VALUE, Features
from throttlekit.monitor.attribution import UNIFORM, skew
from throttlekit.monitor.dimensions import ValueRate
from throttlekit.testing import FakeClock

T0 = 1_700_000_000.0

#: header names in the order each browser sends them (WSGI environ keys)
SHAPES = {
    "chrome": ("HTTP_HOST", "HTTP_CONNECTION", "HTTP_USER_AGENT", "HTTP_ACCEPT",
               "HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT_LANGUAGE"),
    "safari": ("HTTP_HOST", "HTTP_ACCEPT", "HTTP_ACCEPT_LANGUAGE", "HTTP_USER_AGENT",
               "HTTP_ACCEPT_ENCODING", "HTTP_CONNECTION"),
    "firefox": ("HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_LANGUAGE",
                "HTTP_ACCEPT_ENCODING", "HTTP_CONNECTION"),
}
AGENTS = {
    "chrome": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36",
    "safari": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) Version/17.1 Safari/605.1.15",
    "firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
}
BROWSERS = (("chrome", 0.6), ("safari", 0.25), ("firefox", 0.15))
LANGUAGES = (("en-US,en;q=0.9", 0.6), ("de-DE,de;q=0.8", 0.2), ("fr-FR,fr;q=0.8", 0.2))
PATHS = (("/", 0.3), ("/products", 0.25), ("/products/42", 0.15), ("/search", 0.15),
         ("/cart", 0.1), ("/api/items", 0.05))


def pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


def spread(rng: random.Random, n: int, within: str | None = None) -> list[str]:
    """``n`` distinct addresses, at random over the public IPv4 space or ``within`` a /16."""
    out: set[str] = set()
    while len(out) < n:
        if within is None:
            a, b = rng.randrange(11, 223), rng.randrange(256)
        else:
            a, b = (int(x) for x in within.split(".")[:2])
        out.add(f"{a}.{b}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    return sorted(out)


@dataclass
class Visitor:
    """One client: an address and how its browser talks."""

    address: str
    agent: str
    shape: tuple[str, ...]
    language: str
    cookies: bool


def visitors(rng: random.Random, addresses: Sequence[str], **fixed: Any) -> list[Visitor]:
    """Clients on ``addresses`` with browsers drawn like the usual traffic's, except
    what ``fixed`` sets (agent, shape, language, cookies)."""
    out = []
    for address in addresses:
        browser = pick(rng, BROWSERS)
        v = Visitor(address, AGENTS[browser], SHAPES[browser], pick(rng, LANGUAGES),
                    rng.random() < 0.7)
        for name, value in fixed.items():
            setattr(v, name, value)
        out.append(v)
    return out


@dataclass
class Group:
    """Clients that behave alike: each a Poisson source of ``rate`` requests/s."""

    name: str
    clients: list[Visitor]
    rate: float
    start: float = 0.0
    end: float = float("inf")
    paths: Sequence[tuple[str, float]] = PATHS
    #: per request, instead of the client's own user agent (a rotating flood)
    agent: Callable[[random.Random], str] | None = None


def environ(v: Visitor, path: str, agent: str | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                           "REMOTE_ADDR": v.address, "SERVER_NAME": "site.test",
                           "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    values = {"HTTP_HOST": "site.test", "HTTP_CONNECTION": "keep-alive",
              "HTTP_USER_AGENT": agent or v.agent, "HTTP_ACCEPT": "text/html,*/*",
              "HTTP_ACCEPT_ENCODING": "gzip, br", "HTTP_ACCEPT_LANGUAGE": v.language}
    for name in v.shape:
        env[name] = values.get(name, "x")
    if v.cookies:
        env["HTTP_COOKIE"] = "session=1"
    return env


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@dataclass
class Site:
    """A limiter with a generous per-IP throttle, a monitor (and a shield, when asked),
    the WSGI middleware and a fake clock."""

    seed: int = 1
    shield: dict[str, Any] | None = None
    monitor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from throttlekit.monitor import Shield

        self.rng = random.Random(self.seed)
        self.clock = FakeClock(T0)
        self.limiter = Limiter(clock=self.clock)
        self.limiter.throttle("per-ip", "50/second", strategy="token_bucket")
        self.monitor = Monitor(self.limiter, **self.monitor_options)
        self.guard = (Shield(self.limiter, self.monitor, **self.shield)
                      if self.shield is not None else None)
        self.mw = WSGIMiddleware(app, self.limiter)
        self.anomalies: list[Any] = []
        self.monitor.on_anomaly(lambda a: self.anomalies.append(a) if a.scope == "*" else None)
        self.statuses: dict[str, list[int]] = {}
        #: (group, path, status) of every request
        self.log: list[tuple[str, str, int]] = []
        self.refused_by: list[tuple[str, str, dict[str, Any]]] = []
        self.limiter.on("throttled", lambda e: self.refused_by.append(
            (e.rule, e.key or "", e.request.raw)))

    def requests(self, groups: Sequence[Group], start: float, end: float,
                 ) -> Iterator[tuple[float, Group, dict[str, Any]]]:
        """The groups' requests from ``start`` to ``end`` (simulated seconds), in order."""
        rng = self.rng
        events: list[tuple[float, int]] = []
        for gi, g in enumerate(groups):
            lo, hi = max(start, g.start), min(end, g.end)
            total = g.rate * len(g.clients)
            t = lo + rng.expovariate(total)
            while t < hi:
                events.append((t, gi))
                t += rng.expovariate(total)
        events.sort()
        for t, gi in events:
            g = groups[gi]
            v = rng.choice(g.clients)
            agent = g.agent(rng) if g.agent is not None else None
            yield t, g, environ(v, pick(rng, g.paths), agent)

    def run(self, groups: Sequence[Group], start: float, end: float) -> None:
        """Send the groups' requests from ``start`` to ``end``, noting each status."""
        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            codes.append(int(status[:3]))

        for t, g, env in self.requests(groups, start, end):
            self.clock.set(T0 + t)
            codes = self.statuses.setdefault(g.name, [])
            for _ in self.mw(env, start_response):
                pass
            self.log.append((g.name, env["PATH_INFO"], codes[-1]))
        self.clock.set(T0 + end)
        self.monitor.tick()

    def started(self) -> Any:
        found = [a for a in self.anomalies if a.kind == "anomaly_started"]
        assert found, "no anomaly was raised"
        return found[0]


def usual(site: Site, n: int = 150) -> Group:
    """The usual traffic: ``n`` visitors at 1 req/s, spread over networks and browsers."""
    return Group("usual", visitors(site.rng, spread(site.rng, n)), 1.0)


def surge_attribution(site: Site, groups: list[Group], *, warm: float = 60.0,
                      length: float = 8.0) -> Attribution:
    """Warm up on ``groups[0]`` alone, run every group for ``length`` more seconds; the
    attribution made when the anomaly was raised (checked to be the latest's too)."""
    for g in groups[1:]:
        g.start, g.end = warm, warm + length
    site.run(groups, 0.0, warm + length)
    anomaly = site.started()
    assert anomaly.attribution is not None
    latest = site.monitor.attribute()
    assert latest.dimension == anomaly.attribution.dimension
    assert {c.value for c in latest.culprits} == {c.value for c in anomaly.attribution.culprits}
    return anomaly.attribution


def values(found: Attribution) -> list[str]:
    return [str(c.value) for c in found.culprits]


# -- the surges -------------------------------------------------------------------------


def test_a_surge_of_one_user_agent_among_many_addresses() -> None:
    """1,500 addresses all over the address space send 10x the usual volume with one user
    agent and a Chrome-like header order; Safari rises a little (a decoy), Chrome stays
    large but normal: the user agent explains it (the fingerprint it shares with some
    usual Chrome traffic would hit more of the usual traffic)."""
    site = Site()
    base = usual(site)
    rng = site.rng
    bots = Group("bots", visitors(rng, spread(rng, 1500), agent="python-requests/2.31",
                                  shape=SHAPES["chrome"], language="en-US,en;q=0.9",
                                  cookies=False), 1.0)
    safari = Group("safari-decoy", visitors(rng, spread(rng, 40), agent=AGENTS["safari"],
                                            shape=SHAPES["safari"]), 1.0)
    found = surge_attribution(site, [base, bots, safari])
    assert found.dimension == "user_agent"
    assert values(found) == ["python-requests/2.31"]
    assert found.coverage > 0.8 and found.collateral == 0.0
    by = {e.dimension: e for e in found.explanations}
    assert not by["net16"].narrow and not by["client"].narrow


def test_a_surge_from_one_network() -> None:
    """1,500 new addresses inside one /16 (spread over its /24s), browsers and paths like
    the usual traffic's; a big network of usual visitors stays normal and a small one
    doubles (decoys): the /16 explains it."""
    site = Site()
    rng = site.rng
    base = usual(site)
    big = visitors(rng, spread(rng, 60, within="81.2.0.0"))
    base.clients += big  # a large but normal network
    bots = Group("bots", visitors(rng, spread(rng, 1500, within="203.0.0.0")), 1.0)
    decoy = Group("decoy", visitors(rng, spread(rng, 10, within="81.3.0.0")), 1.0)
    found = surge_attribution(site, [base, bots, decoy])
    assert found.dimension == "net16"
    assert values(found) == ["203.0.0.0/16"]
    assert not {e.dimension: e for e in found.explanations}["net24"].narrow


def test_a_surge_on_one_path() -> None:
    """1,500 addresses, browsers like the usual ones, all on /search (15% of the usual
    traffic); /cart rises a little, / stays large but normal: the path explains it, and
    no browser does (each rose, but each holds too much of the usual traffic)."""
    site = Site()
    rng = site.rng
    base = usual(site)
    bots = Group("bots", visitors(rng, spread(rng, 1500)), 1.0, paths=(("/search", 1.0),))
    carts = Group("cart-decoy", visitors(rng, spread(rng, 15)), 1.0, paths=(("/cart", 1.0),))
    found = surge_attribution(site, [base, bots, carts])
    assert found.dimension == "path"
    assert values(found) == ["/search"]
    assert 0.05 < found.collateral < 0.25  # the usual /search traffic shares the throttle
    assert not {e.dimension: e for e in found.explanations}["user_agent"].narrow


def test_a_surge_with_one_header_fingerprint() -> None:
    """1,500 addresses with browsers' user agents (spread like the usual ones) and paths,
    but their own header order and no Accept-Language: the fingerprint explains it."""
    site = Site()
    rng = site.rng
    base = usual(site)
    shape = ("HTTP_USER_AGENT", "HTTP_HOST", "HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT")
    bots = Group("bots", visitors(rng, spread(rng, 1500), shape=shape, cookies=False), 1.0)
    found = surge_attribution(site, [base, bots])
    expected = Features().values(RequestView.from_environ(
        environ(bots.clients[0], "/"), ClientIPResolver()))[2]
    assert found.dimension == "fingerprint"
    assert values(found) == [expected]


@pytest.mark.slow
def test_a_user_agent_rotating_flood_is_held_by_its_networks() -> None:
    """3,000 addresses over a /12 on one expensive path, a new user agent per request: no
    user agent explains it, its sixteen /16 networks do (none holds usual traffic), over
    the path (which holds 15% of the usual traffic)."""
    site = Site()
    rng = site.rng
    base = usual(site)
    addresses = [a for b in range(16) for a in spread(rng, 190, within=f"100.{64 + b}.0.0")]
    bots = Group("bots", visitors(rng, addresses), 0.5, paths=(("/search", 1.0),),
                 agent=lambda r: f"Mozilla/5.0 (rotating {r.randrange(10**9)})")
    found = surge_attribution(site, [base, bots])
    assert found.dimension == "net16"
    assert set(values(found)) <= {f"100.{64 + b}.0.0/16" for b in range(16)}
    assert found.collateral == 0.0
    by = {e.dimension: e for e in found.explanations}
    assert by["path"].narrow and not by["user_agent"].narrow


def test_heavy_hitters_from_few_addresses_are_the_clients() -> None:
    """50 addresses at 30 req/s each (10x the usual volume): the clients explain it."""
    site = Site()
    rng = site.rng
    base = usual(site)
    bots = Group("bots", visitors(rng, spread(rng, 50)), 30.0)
    found = surge_attribution(site, [base, bots])
    assert found.dimension == "client"
    assert set(values(found)) == {v.address for v in bots.clients}


@pytest.mark.slow
def test_a_flash_crowd_is_explained_by_nothing_narrower_than_everything() -> None:
    """1,500 new visitors (10x), each at a user's rate, spread over networks, browsers and
    paths like the usual traffic: an anomaly, attributed to everything, and so at every
    later look."""
    site = Site()
    rng = site.rng
    base = usual(site)
    crowd = Group("crowd", visitors(rng, spread(rng, 1500)), 1.0)
    crowd.start, crowd.end = 60.0, 80.0
    site.run([base, crowd], 0.0, 62.0)
    for t in range(62, 80):
        site.run([base, crowd], float(t), t + 1.0)
        assert not site.monitor.attribute().narrow, site.monitor.attribution
    anomaly = site.started()
    assert anomaly.attribution is not None and anomaly.attribution.dimension == "*"
    assert anomaly.attribution.culprits == ()
    assert all(not e.narrow for e in anomaly.attribution.explanations)


def first_visits(site: Site) -> tuple[Group, Group]:
    """The usual traffic with cookies, and its first visits: 10 clients without a cookie
    yet (one Chrome header shape), about 6% of the traffic; and 1,500 new visitors who
    send that shape (they keep no cookie while they are refused)."""
    rng = site.rng
    base = Group("usual", visitors(rng, spread(rng, 150), cookies=True), 1.0)
    fixed: dict[str, Any] = {"agent": AGENTS["chrome"], "shape": SHAPES["chrome"],
                             "language": "en-US,en;q=0.9", "cookies": False}
    base.clients += visitors(rng, spread(rng, 10), **fixed)
    crowd = Group("crowd", visitors(rng, spread(rng, 1500), **fixed), 1.0)
    return base, crowd


def test_a_crowd_of_first_visits_in_the_usual_page_mix_is_not_contained() -> None:
    """1,500 new visitors, all with the header shape of a first visit (no cookie), asking
    for the usual mix of pages: that fingerprint soars, but normal traffic has it too and
    the surge is shaped like the usual traffic (the path skew is small), so nothing
    narrower than everything explains it (admission control sheds the excess)."""
    site = Site()
    base, crowd = first_visits(site)
    found = surge_attribution(site, [base, crowd])
    by = {e.dimension: e for e in found.explanations}
    assert by["path"].skew < UNIFORM
    fingerprint = by["fingerprint"]
    assert fingerprint.narrow and fingerprint.collateral > 0  # alone, it would be named
    assert found.dimension == "*" and found.culprits == ()


def test_the_same_shape_on_one_path_is_still_named() -> None:
    """The same 1,500 first-visit shapes, all on /search: the surge is not the usual page
    mix (a large path skew), so it is explained narrowly."""
    site = Site()
    base, crowd = first_visits(site)
    crowd.paths = (("/search", 1.0),)
    found = surge_attribution(site, [base, crowd])
    assert {e.dimension: e for e in found.explanations}["path"].skew > 0.5
    assert found.dimension in ("path", "fingerprint")


def test_skew_is_the_distance_between_the_excess_and_the_baseline_mix() -> None:
    """Every value rising in proportion: 0; the excess on a value normal traffic never
    had: 1; half of it there: one half; no excess or baseline: 1."""
    rows = [ValueRate("/", 0, 30.0, 3.0), ValueRate("/a", 0, 10.0, 1.0)]
    assert skew(rows, 36.0, 4.0) == pytest.approx(0.0)
    rows = [ValueRate("/", 0, 3.0, 3.0), ValueRate("/new", 0, 36.0, 0.0)]
    assert skew(rows, 36.0, 3.0) == pytest.approx(1.0)
    rows = [ValueRate("/", 0, 21.0, 3.0), ValueRate("/new", 0, 18.0, 0.0)]
    assert skew(rows, 36.0, 3.0) == pytest.approx(0.5)
    assert skew(rows, 0.0, 3.0) == 1.0 and skew(rows, 36.0, 0.0) == 1.0


def test_quiet_traffic_attributes_nothing() -> None:
    """Without a surge there is no excess: every dimension says so."""
    site = Site()
    site.run([usual(site)], 0.0, 60.0)
    found = site.monitor.attribute()
    assert found.dimension == "*" and site.anomalies == []


# -- memory, features, settings -----------------------------------------------------------


def test_memory_is_bounded_whatever_the_flood_sends() -> None:
    """A flood with a new path, user agent, header set and address per request: each
    dimension holds at most window / bucket * 2 * capacity values in its sketch plus
    capacity baselines, and the feature caches stay under their size."""
    site = Site(monitor_options={"dimension_capacity": 16, "capacity": 32})
    rng = site.rng
    base = Group("usual", visitors(rng, spread(rng, 50)), 1.0)
    site.run([base], 0.0, 40.0)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    for i in range(20_000):
        site.clock.set(T0 + 40.0 + i / 1000)
        v = Visitor(f"{11 + i % 200}.{i % 251}.{i % 241}.{1 + i % 250}", f"agent {i}",
                    (*SHAPES["chrome"], f"HTTP_X_{i % 5000}"), f"l{i}", bool(i % 2))
        for _ in site.mw(environ(v, f"/p/{i}"), start_response):
            pass
    bound = 10 * 2 * 16 + 16
    memory = site.monitor.memory()
    assert set(memory) == {"client", *DIMENSIONS, "caches"}
    assert all(memory[name] <= bound for name in DIMENSIONS), memory
    assert memory["client"] <= 10 * 2 * 32
    assert memory["caches"] <= 2 * 8192


def view_of(env: dict[str, Any]) -> RequestView:
    return RequestView.from_environ(env, ClientIPResolver())


def test_features_are_stable_and_the_same_for_wsgi_and_asgi() -> None:
    """The fingerprint hashes the header names in order and the Accept-Language, the
    same for WSGI and ASGI; values are cut at MAX_VALUE; networks of IPv4 and IPv6."""
    features = Features()
    v = Visitor("198.51.100.7", "UA", SHAPES["firefox"], "de", True)
    env = environ(v, "/x" * 300)
    wsgi = features.values(view_of(env))
    headers = [(k[5:].replace("_", "-").lower().encode(), str(val).encode())
               for k, val in env.items() if k.startswith("HTTP_")]
    scope = {"type": "http", "method": "GET", "path": "/x" * 300, "headers": headers,
             "client": ("198.51.100.7", 1234)}
    asgi = features.values(RequestView.from_scope(scope, ClientIPResolver()))
    assert wsgi == asgi
    path, agent, fingerprint, net24, net16 = wsgi
    assert len(path) == MAX_VALUE and agent == "UA"
    assert (net24, net16) == ("198.51.100.0/24", "198.51.0.0/16")
    assert fingerprint == "f785476c"  # stable across processes and versions
    other = dict(env, HTTP_ACCEPT_LANGUAGE="fr")
    assert features.values(view_of(other))[2] != fingerprint
    no_cookie = {k: val for k, val in env.items() if k != "HTTP_COOKIE"}
    assert features.values(view_of(no_cookie))[2] != fingerprint
    assert Features().networks("2001:db8:1:2::/64") == ("2001:db8:1::/56", "2001:db8:1::/48")
    assert Features().networks(None) == (None, None)
    long_agent = dict(env, HTTP_USER_AGENT="A" * 1000)
    assert features.values(view_of(long_agent))[1] == "A" * MAX_VALUE


def test_dimensions_can_be_chosen_or_turned_off() -> None:
    """dimensions=() counts the client key only; an unknown dimension is a ConfigError."""
    limiter = Limiter()
    assert Monitor(limiter, dimensions=()).dimension_names == ("client",)
    assert Monitor(Limiter(), dimensions=["net16", "path"]).dimension_names == (
        "client", "path", "net16")
    for bad in (["nope"], ["path", "path"]):
        with pytest.raises(ConfigError):
            Monitor(Limiter(), dimensions=bad)
    for options in ({"coverage": 2}, {"max_values": 0}, {"factor": 1}, {"covrage": 0.5}):
        with pytest.raises(ConfigError):
            Monitor(Limiter(), attribution=options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Monitor(Limiter(), dimension_capacity=0)
