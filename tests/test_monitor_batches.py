"""The monitor counts the sampled requests' dimensions and rule keys in batches: a read, a
bucket roll or a change of the sampling weight sees every request counted before it, each
in its own bucket at its own weight, with the path the rules saw."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from werkzeug.test import Client

from throttlekit import Event, Limiter, RequestView, WSGIMiddleware
from throttlekit._clientip import ClientIPResolver
from throttlekit._request import _UNSET
from throttlekit.monitor import Monitor
from throttlekit.monitor.dimensions import BATCH
from throttlekit.testing import FakeClock

T0 = 1_700_000_000.0
RESOLVER = ClientIPResolver()


def _view(i: int, path: str) -> RequestView:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
           "REMOTE_ADDR": f"10.0.{i // 250 % 250}.{i % 250 + 1}", "SERVER_NAME": "s",
           "SERVER_PORT": "80", "wsgi.url_scheme": "http", "HTTP_USER_AGENT": "ua"}
    return RequestView.from_environ(env, RESOLVER)


def _send(monitor: Monitor, path: str, times: Iterable[float], clients: int = 50) -> None:
    for j, at in enumerate(times):
        view = _view(j % clients, path)
        monitor(Event("allowed", "per-ip", view.client_key, view, None, False, at))


def _bucket(monitor: Monitor, dimension: str, start: float) -> dict[Any, int]:
    """The counts of the one bucket starting at ``start``."""
    found = monitor.dimension(dimension).hitters.closed(start, start + 0.5)
    assert len(found) == 1
    return dict(found[0][1].counts)


def test_a_read_right_after_a_few_requests_sees_them_all() -> None:
    """Fewer requests than a batch, every one sampled: each dimension, the clients and the
    rule's keys read them all at once, and a later read the next ones too."""
    monitor = Monitor(sample=1)
    _send(monitor, "/a", [T0 + 0.1, T0 + 0.2, T0 + 0.3], clients=2)
    now = T0 + 0.5
    assert [(r.value, r.requests) for r in monitor.dimension("path").rows(now)] == [("/a", 3)]
    assert monitor.dimension("user_agent").rows(now)[0].requests == 3
    assert monitor.dimension("net24").hitters.total(now) == 3
    assert monitor.top(10, rule="per-ip", now=now) == [("10.0.0.1", 2), ("10.0.0.2", 1)]
    _send(monitor, "/b", [T0 + 0.6])
    assert {r.value: r.requests for r in monitor.dimension("path").rows(now)} == {
        "/a": 3, "/b": 1}
    assert monitor.dimension("fingerprint").hitters.total(now) == 4


def test_the_views_queued_at_a_roll_count_in_their_bucket_at_their_weight() -> None:
    """600 requests in the first second (all counted: nothing was sampled before), 1000 in
    the second (1 in 2, counted twice each), 100 in the third (1 in 4): each second's path
    is found in its own bucket only, at its own weight, though a batch was still queued
    when each bucket rolled."""
    monitor = Monitor()
    assert 600 % BATCH and BATCH < 100  # views still queued at each roll
    _send(monitor, "/one", [T0 + j / 600 for j in range(600)])
    _send(monitor, "/two", [T0 + 1 + j / 1000 for j in range(1000)])
    assert monitor.sampling == 2
    _send(monitor, "/three", [T0 + 2 + j / 100 for j in range(100)])
    assert monitor.sampling == 4
    monitor.tick(T0 + 3)
    assert _bucket(monitor, "path", T0) == {"/one": 600}
    two = _bucket(monitor, "path", T0 + 1)
    assert list(two) == ["/two"] and two["/two"] % 2 == 0 and 700 < two["/two"] < 1300
    three = _bucket(monitor, "path", T0 + 2)
    assert list(three) == ["/three"] and three["/three"] % 4 == 0
    # the rule's keys: the same samples at the same weights
    counts = dict(monitor.top(100, rule="per-ip", now=T0 + 0.999))
    assert sum(counts.values()) == 600


def test_the_path_counted_is_the_one_the_rules_saw() -> None:
    """An app rewriting ``PATH_INFO`` in place (a dispatcher mounting a sub-app) does
    not change the path counted for its request, however late it is counted."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["PATH_INFO"] = environ["PATH_INFO"].removeprefix("/api")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "100/second")
    monitor = Monitor(limiter, sample=1)
    client = Client(WSGIMiddleware(app, limiter))
    for i in range(5):
        clock.now += 0.01
        response = client.get(f"/api/{i % 2}", environ_overrides={"REMOTE_ADDR": "10.0.0.1"})
        assert response.status_code == 200
    rows = monitor.dimension("path").rows(clock.now)
    assert {r.value: r.requests for r in rows} == {"/api/0": 3, "/api/1": 2}


class _CountedCopies(dict):  # type: ignore[type-arg]
    """A WSGI environ that counts its copies (``headers_of`` copies the environ)."""

    copies = 0

    def copy(self) -> dict[str, Any]:
        type(self).copies += 1
        return dict(self)


def test_dimensions_that_read_no_header_take_none_of_the_requests() -> None:
    """With only the path and the networks counted, a sampled request's headers are never
    taken (no copy of its environ, its ASGI headers never parsed), and its path and
    networks are counted as before; with the user agent counted, they are taken."""
    for dimensions, copied in ((("path", "net24"), False), (("path", "user_agent"), True)):
        _CountedCopies.copies = 0
        monitor = Monitor(sample=1, dimensions=dimensions)
        views = []
        for j in range(BATCH + 3):
            env = _CountedCopies({
                "REQUEST_METHOD": "GET", "PATH_INFO": "/a", "REMOTE_ADDR": f"10.0.0.{j % 3 + 1}",
                "SERVER_NAME": "s", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
                "HTTP_USER_AGENT": "ua"})
            views.append(RequestView.from_environ(env, RESOLVER))
        scope = {"type": "http", "method": "GET", "path": "/b", "client": ("10.1.0.1", 1),
                 "headers": [(b"user-agent", b"ua")]}
        asgi = RequestView.from_scope(scope, RESOLVER)
        for view in [*views, asgi]:
            monitor(Event("allowed", "per-ip", view.client_key, view, None, False, T0 + 0.1))
        now = T0 + 0.5
        assert {r.value: r.requests for r in monitor.dimension("path").rows(now)} == {
            "/a": BATCH + 3, "/b": 1}
        assert (_CountedCopies.copies == BATCH + 3) is copied
        assert (asgi._headers is not _UNSET) is copied
        if not copied:
            assert {r.value: r.requests for r in monitor.dimension("net24").rows(now)} == {
                "10.0.0.0/24": BATCH + 3, "10.1.0.0/24": 1}
        else:
            assert monitor.dimension("user_agent").rows(now)[0].requests == BATCH + 4
