"""Listeners told an event's fields (``event_fields``): what they are given, in which
order next to plain callbacks, and that a failing one is logged, not fatal."""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

import pytest

from throttlekit import Event, Limiter, WSGIMiddleware
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
