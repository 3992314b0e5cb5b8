"""Community blocklists (issue 16, item 4): plain lists and CrowdSec decisions from a file
or a URL (served on loopback by a real HTTP server), refreshed on requests or in a thread,
swapped atomically, the last good list kept when a load fails."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.blocklists import Blocklist, parse_list
from throttlekit.testing import FakeClock

Answer = tuple[int, bytes, dict[str, str]]


class ListServer:
    """A loopback HTTP server answering with ``handler(path, query, headers)``; records
    every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.handler: Callable[[str, dict[str, list[str]], dict[str, str]], Answer] = (
            lambda path, query, headers: (404, b"", {}))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((parts.path, query, headers))
                status, body, extra = server.handler(parts.path, query, headers)
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, body: str, status: int = 200, **headers: str) -> None:
        self.handler = lambda path, query, hdrs: (status, body.encode(), headers)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ListServer]:
    s = ListServer()
    yield s
    s.close()


def view(ip: str | None) -> SimpleNamespace:
    return SimpleNamespace(client_ip=ip)


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _status(mw, ip: str) -> str:
    status: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": ip,
               "wsgi.input": None, "SERVER_NAME": "t", "SERVER_PORT": "80"}
    b"".join(mw(environ, lambda s, h, e=None: status.append(s)))
    return status[0][:3]


PLAIN = """\
# a community list
203.0.113.0/24 ; SBL123
192.0.2.7        some note
2001:db8::/32
   # indented comment

198.51.100.9#trailing
"""


# -- formats -----------------------------------------------------------------------------


def test_plain_list_from_a_file_blocks_through_the_limiter(tmp_path):
    """A text file's addresses and networks (comments with # and ;, notes after the
    address) are refused with 403 by limiter.blocklist; others pass."""
    path = tmp_path / "drop.txt"
    path.write_text(PLAIN)
    limiter = Limiter()
    limiter.blocklist("community", Blocklist.from_file(path))
    mw = WSGIMiddleware(_app, limiter)
    assert [_status(mw, ip) for ip in ("203.0.113.77", "192.0.2.7", "198.51.100.9",
                                       "2001:db8:5::1", "192.0.2.8", "10.0.0.1")] == [
        "403", "403", "403", "403", "200", "200"]


def test_crowdsec_cscli_json_keeps_ip_and_range_bans(tmp_path):
    """``cscli decisions list -o json`` (alerts holding decisions): Ip and Range bans are
    listed; captcha decisions and Country scopes are not."""
    alerts = [
        {"id": 1, "source": {"value": "192.0.2.1"}, "decisions": [
            {"value": "192.0.2.1", "scope": "Ip", "type": "ban", "duration": "3h"},
            {"value": "198.51.100.0/24", "scope": "Range", "type": "ban"}]},
        {"id": 2, "decisions": [
            {"value": "203.0.113.5", "scope": "Ip", "type": "captcha"},
            {"value": "FR", "scope": "Country", "type": "ban"}]},
        {"id": 3, "decisions": None},
    ]
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(alerts))
    bl = Blocklist(path)
    assert len(bl) == 2
    assert [ip in bl for ip in ("192.0.2.1", "198.51.100.200", "203.0.113.5")] == [
        True, True, False]
    assert bl(view("::ffff:192.0.2.1")) is True  # the mapped form of a listed address


def test_parse_list_skips_a_few_bad_lines_and_refuses_a_non_list(caplog):
    """A stray bad line is skipped (logged); a document that is mostly not addresses (an
    HTML error page) is not a blocklist."""
    with caplog.at_level(logging.WARNING, "throttlekit.blocklists"):
        assert len(parse_list("192.0.2.1\n192.0.2.2\nnot-an-ip\n")) == 2
    assert "not-an-ip" in caplog.text
    from throttlekit.blocklists import LoadError

    with pytest.raises(LoadError, match="not a blocklist"):
        parse_list("<html>\n<body>Bad gateway</body>\n</html>\n")
    with pytest.raises(LoadError, match="not JSON"):
        parse_list("{oops", "crowdsec")


# -- refresh and failures ----------------------------------------------------------------


def test_file_refresh_swaps_at_most_every_interval(tmp_path):
    """A changed file takes effect on the first request after `refresh` seconds, not
    before; an unchanged file is not re-read."""
    clock = FakeClock(1000.0)
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    bl = Blocklist(path, refresh=60, clock=clock)
    path.write_text("192.0.2.2\n192.0.2.3\n")
    clock.advance(59)
    assert bl(view("192.0.2.1")) and not bl(view("192.0.2.2"))
    clock.advance(1)
    assert not bl(view("192.0.2.1")) and bl(view("192.0.2.2")) and len(bl) == 2
    before = bl.ipset
    clock.advance(60)
    assert bl(view("192.0.2.3")) and bl.ipset is before  # unchanged: same set kept


def test_a_failing_reload_keeps_the_last_good_list(tmp_path, caplog):
    """A file gone or garbled: the last good list stays, the failure is logged and
    counted, and it is retried after `retry` seconds."""
    clock = FakeClock(1000.0)
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    bl = Blocklist(path, refresh=60, retry=10, clock=clock)
    path.unlink()
    clock.advance(60)
    with caplog.at_level(logging.WARNING, "throttlekit.blocklists"):
        assert bl(view("192.0.2.1"))
    assert bl.failures == 1 and "cannot read" in (bl.last_error or "")
    assert "keeping the last good list (1 entries)" in caplog.text
    path.write_text("<html>oops</html>\n")
    clock.advance(9)
    assert bl(view("192.0.2.1")) and bl.failures == 1  # not retried before `retry`
    clock.advance(1)
    assert bl(view("192.0.2.1")) and bl.failures == 2
    path.write_text("192.0.2.9\n")
    clock.advance(10)
    assert bl(view("192.0.2.9")) and not bl(view("192.0.2.1")) and bl.last_error is None


def test_url_list_with_etag_costs_a_round_trip_when_unchanged(server):
    """A URL list is fetched with urllib; its ETag comes back as If-None-Match and a 304
    keeps the list without parsing it again."""
    clock = FakeClock(1000.0)
    etag = '"v1"'

    def handler(path, query, headers):
        if headers.get("if-none-match") == etag:
            return 304, b"", {}
        return 200, b"192.0.2.1\n203.0.113.0/24\n", {"ETag": etag}

    server.handler = handler
    bl = Blocklist.from_url(server.url + "/drop.txt", refresh=30, clock=clock)
    kept = bl.ipset
    assert bl(view("203.0.113.4"))
    clock.advance(30)
    assert bl(view("203.0.113.4")) and bl.ipset is kept
    assert [r[2].get("if-none-match") for r in server.requests] == [None, etag]


def test_url_failures_keep_the_list(server, caplog):
    """HTTP 500, then an HTML page with status 200: both logged, the list stays."""
    clock = FakeClock(1000.0)
    server.serve("192.0.2.1\n")
    bl = Blocklist(server.url + "/list", refresh=30, clock=clock)
    for body, status in (("boom", 500), ("<html><body>maintenance</body></html>", 200)):
        server.serve(body, status)
        clock.advance(30)
        with caplog.at_level(logging.WARNING, "throttlekit.blocklists"):
            assert bl(view("192.0.2.1"))
    assert bl.failures == 2
    assert "HTTP 500" in caplog.text and "not a blocklist" in caplog.text


def test_a_slow_url_holds_one_request_for_at_most_timeout(server):
    """The request that refreshes waits at most `timeout` for a server that hangs; a
    concurrent request does not wait at all; the list stays."""
    clock = FakeClock(1000.0)
    server.serve("192.0.2.1\n")
    bl = Blocklist(server.url + "/list", refresh=30, timeout=0.5, clock=clock)
    release = threading.Event()

    def slow(path, query, headers):
        release.wait(5)
        return 200, b"192.0.2.2\n", {}

    server.handler = slow
    clock.advance(30)
    took: dict[str, float] = {}

    def refreshing() -> None:
        t = time.monotonic()
        bl(view("192.0.2.1"))
        took["refreshing"] = time.monotonic() - t

    worker = threading.Thread(target=refreshing)
    worker.start()
    while len(server.requests) < 2:  # the fetch is under way
        time.sleep(0.01)
    t = time.monotonic()
    assert bl(view("192.0.2.1"))
    took["other"] = time.monotonic() - t
    worker.join(5)
    release.set()
    assert took["other"] < 0.2  # did not wait for the fetch
    assert 0.4 <= took["refreshing"] < 2.0  # bounded by the timeout
    assert bl(view("192.0.2.1")) and bl.failures == 1 and len(server.requests) == 2


def test_crowdsec_lapi_stream_startup_then_changes(server):
    """LAPI /v1/decisions/stream: startup=true first (all decisions, with the bouncer's
    X-Api-Key), then the new and deleted decisions are applied."""
    clock = FakeClock(1000.0)
    answers = [
        {"new": [{"value": "192.0.2.1", "scope": "Ip", "type": "ban"},
                 {"value": "198.51.100.0/24", "scope": "Range", "type": "ban"},
                 {"value": "203.0.113.1", "scope": "Ip", "type": "captcha"}],
         "deleted": None},
        {"new": [{"value": "192.0.2.50", "scope": "Ip", "type": "ban"}],
         "deleted": [{"value": "192.0.2.1", "scope": "Ip", "type": "ban"}]},
        {"new": None, "deleted": None},
    ]

    def handler(path, query, headers):
        if path != "/v1/decisions/stream" or headers.get("x-api-key") != "secret":
            return 403, b"{}", {}
        return 200, json.dumps(answers.pop(0)).encode(), {"Content-Type": "application/json"}

    server.handler = handler
    bl = Blocklist(server.url + "/v1/decisions/stream", headers={"X-Api-Key": "secret"},
                   refresh=10, clock=clock)
    assert (bl(view("192.0.2.1")), bl(view("198.51.100.7")), bl(view("203.0.113.1"))) == (
        True, True, False)
    clock.advance(10)
    assert (bl(view("192.0.2.1")), bl(view("192.0.2.50")), bl(view("198.51.100.7"))) == (
        False, True, True)
    clock.advance(10)
    assert bl(view("192.0.2.50")) and len(bl) == 2
    assert [r[1].get("startup") for r in server.requests] == [["true"], None, None]


def test_url_down_at_start_starts_empty_and_retries(server):
    """A URL failing at start: an empty list (logged), loaded on the retry."""
    clock = FakeClock(1000.0)
    server.serve("nope", 503)
    bl = Blocklist(server.url + "/list", refresh=300, retry=5, clock=clock)
    assert len(bl) == 0 and bl.failures == 1
    server.serve("192.0.2.1\n")
    clock.advance(5)
    assert bl(view("192.0.2.1"))


def test_thread_refresh_needs_no_request(tmp_path):
    """thread=True: a daemon thread reloads the file; requests never load it."""
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    bl = Blocklist(path, refresh=0.05, thread=True)
    try:
        path.write_text("192.0.2.2\n")
        deadline = time.monotonic() + 5
        while "192.0.2.2" not in bl and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "192.0.2.2" in bl and "192.0.2.1" not in bl
    finally:
        bl.close()


def test_safelist_hook_and_a_request_without_client_ip(tmp_path):
    """The same object works as a safelist predicate; a request with no client IP is not
    listed."""
    path = tmp_path / "partners.txt"
    path.write_text("10.1.0.0/16\n")
    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.safelist("partners", Blocklist(path))
    limiter.throttle("tight", "1/hour")
    mw = WSGIMiddleware(_app, limiter)
    assert [_status(mw, "10.1.2.3") for _ in range(3)] == ["200"] * 3
    assert [_status(mw, "10.2.0.1") for _ in range(2)] == ["200", "429"]
    assert Blocklist(path)(view(None)) is False


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"refresh": 0}, "0"),
    ({"refresh": float("nan")}, "nan"),
    ({"timeout": -1}, "-1"),
    ({"format": "csv"}, "'csv'"),
    ({"types": "ban"}, "'ban'"),
    ({"max_bytes": 0}, "0"),
    ({"headers": {"X-Api-Key": "k"}}, "headers are for URLs"),
])
def test_bad_configuration_is_a_config_error(tmp_path, kwargs, named):
    """Each bad argument is a ConfigError naming the bad value."""
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        Blocklist(path, **kwargs)


def test_missing_file_and_wrong_constructor_are_config_errors(tmp_path):
    """A file that cannot be read at start, a URL to from_file and a path to from_url."""
    with pytest.raises(ConfigError, match=r"missing\.txt"):
        Blocklist(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="from_file takes a file path"):
        Blocklist.from_file("http://127.0.0.1:1/list")
    with pytest.raises(ConfigError, match="from_url takes an http"):
        Blocklist.from_url(str(tmp_path / "list.txt"))
