"""Listeners told an event's fields (``event_fields``): what they are given, in which
order next to plain callbacks, and that a failing one is logged, not fatal."""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

import pytest

from throttlekit import ConfigError, Event, Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor
from throttlekit.testing import FakeClock

T0 = 1_700_000_000.25


class Fields:
    """A listener that takes the fields (as the Monitor does)."""

    def __init__(self, log: list[Any], raises: bool = False) -> None:
        self.log = log
        self.raises = raises

    def __call__(self, event: Event) -> None:  # never called by the limiter
        raise AssertionError("told through event_fields")

    def event_fields(self, *fields: Any) -> None:
        if self.raises:
            raise RuntimeError("broken hook")
        self.log.append(("fields", fields))


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _get(app: Any, ip: str = "198.51.100.7") -> str:
    out: list[str] = []
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "",
                "REMOTE_ADDR": ip, "SERVER_NAME": "x", "SERVER_PORT": "80",
                "wsgi.url_scheme": "http"}, lambda status, headers, exc=None: out.append(status))
    list(body)
    return out[0]


def _limiter(clock: FakeClock, rate: str = "1/minute") -> Limiter:
    lim = Limiter("memory://", clock=clock)
    lim.throttle("per-ip", rate)
    return lim


def test_a_fields_listener_gets_an_events_fields_in_order() -> None:
    """Alone on its kinds, it is given exactly what an Event would hold (the decision's
    time on the limiter's clock included)."""
    clock = FakeClock(T0)
    lim = _limiter(clock)
    log: list[Any] = []
    lim.on(Fields(log))
    app = WSGIMiddleware(_app, lim)
    assert _get(app).startswith("200")
    assert _get(app).startswith("429")
    assert [f[1][0] for f in log] == ["allowed", "throttled"]
    for _, fields in log:
        kind, rule, key, request, decision, dry_run, at = fields
        assert (rule, key, dry_run, at) == ("per-ip", "198.51.100.7", False, T0)
        assert request.path == "/" and decision.allowed is (kind == "allowed")


def test_fields_and_event_listeners_keep_subscription_order() -> None:
    """Next to a plain callback each is called in the order subscribed, with the same
    values (the Event built once, for the callbacks that take one)."""
    lim = _limiter(FakeClock(T0), "5/minute")
    log: list[Any] = []
    lim.on(Fields(log))
    lim.on("allowed", lambda e: log.append(("event", tuple(e))))
    lim.on(Fields(log))
    assert _get(WSGIMiddleware(_app, lim)).startswith("200")
    assert [kind for kind, _ in log] == ["fields", "event", "fields"]
    assert log[0][1] == log[1][1] == log[2][1]


def test_a_failing_fields_listener_is_logged_not_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    lim = _limiter(FakeClock(T0))
    lim.on(Fields([], raises=True))
    with caplog.at_level(logging.ERROR, "throttlekit"):
        assert _get(WSGIMiddleware(_app, lim)).startswith("200")
    assert "broken hook" in caplog.text and "'allowed' event of rule 'per-ip'" in caplog.text


def test_a_monitor_counts_what_the_limiter_tells_it() -> None:
    """The Monitor subscribes through event_fields; fed Events by hand it counts the same."""
    told = _limiter(FakeClock(T0))
    monitor = Monitor(told)
    events: list[Event] = []
    fed = _limiter(FakeClock(T0))
    fed.on(events.append)
    by_hand = Monitor()
    for app in (WSGIMiddleware(_app, told), WSGIMiddleware(_app, fed)):
        for ip in ("198.51.100.7", "198.51.100.7", "198.51.100.8"):
            _get(app, ip)
    for event in events:
        by_hand(event)
    assert monitor.requests == by_hand.requests == 3
    assert monitor.counts() == by_hand.counts() == {("per-ip", "allowed", False): 2,
                                                     ("per-ip", "throttled", False): 1}
    mine, theirs = monitor.snapshot(T0), by_hand.snapshot(T0)
    assert mine["top"] == theirs["top"] and mine["counters"] == theirs["counters"]


def test_a_mock_listener_is_called_with_the_event() -> None:
    """A Mock answers every attribute, event_fields too: it is still given the Event."""
    lim = _limiter(FakeClock(T0))
    listener = mock.Mock()
    lim.on("allowed", listener)
    assert _get(WSGIMiddleware(_app, lim)).startswith("200")
    listener.assert_called_once()
    (event,), _ = listener.call_args
    assert isinstance(event, Event) and event.kind == "allowed"


def test_off_unsubscribes_from_one_kind_or_every_kind() -> None:
    """``off(kind, cb)`` stops that kind only, ``off(cb)`` every kind (each subscription of
    it); it says whether the callback was subscribed there."""
    lim = _limiter(FakeClock(T0), "2/minute")
    seen: list[str] = []
    other: list[str] = []

    def cb(event: Event) -> None:
        seen.append(event.kind)

    lim.on(cb)
    lim.on("allowed", cb)  # twice on "allowed"
    lim.on(lambda e: other.append(e.kind))
    app = WSGIMiddleware(_app, lim)
    assert _get(app).startswith("200")
    assert seen == ["allowed", "allowed"]
    assert lim.off("allowed", cb) is True  # both of its "allowed" subscriptions
    assert lim.off("allowed", cb) is False
    assert _get(app).startswith("200")
    assert _get(app).startswith("429")
    assert seen == ["allowed", "allowed", "throttled"]  # still told of the other kinds
    assert lim.off(cb) is True and lim.off(cb) is False
    assert _get(app).startswith("429")
    assert seen == ["allowed", "allowed", "throttled"]
    assert other == ["allowed", "allowed", "throttled", "throttled"]


def test_off_a_monitor_stops_it_and_brings_the_fast_path_back() -> None:
    """A Monitor (told through event_fields) taken off counts no more; with no listener
    left, no kind is active (the engine's fast path)."""
    clock = FakeClock(T0)
    lim = _limiter(clock, "100/minute")
    monitor = Monitor(lim)
    app = WSGIMiddleware(_app, lim)
    assert _get(app).startswith("200")
    assert monitor.requests == 1
    assert lim.engine.listeners.active
    assert lim.off(monitor) is True
    assert lim.engine.listeners.active == frozenset()
    assert _get(app).startswith("200")
    assert monitor.requests == 1 and monitor.counts() == {("per-ip", "allowed", False): 1}


def test_off_refuses_what_on_refuses() -> None:
    lim = _limiter(FakeClock(T0))
    with pytest.raises(ConfigError, match="unknown event kind 'allow'"):
        lim.off("allow", print)
    with pytest.raises(ConfigError, match="off\\(\\) takes"):
        lim.off("allowed")  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="off\\(\\) takes"):
        lim.off(42, print)
    assert lim.off(print) is False  # never subscribed: nothing to do
