"""Blocklists against hostile or broken sources: whatever a URL or a file serves, a load
that fails keeps the last good list and never raises into a request, the constructor (a
URL) or the refresh thread; a fetch is bounded in time and bytes; a redirect never carries
the list's headers (a CrowdSec bouncer key) to another origin."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from throttlekit.blocklists import Blocklist
from throttlekit.testing import FakeClock

Reply = Callable[[socket.socket], None]


class RawServer:
    """A loopback TCP server that reads one request head and runs ``reply(conn)``: any
    bytes at any pace, not necessarily HTTP."""

    def __init__(self) -> None:
        self.reply: Reply = lambda conn: None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/list"
        self.heads: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.heads.append(head)
                self.reply(conn)
            except OSError:
                pass  # the client gave up

    def answer(self, body: bytes, head: bytes = b"") -> None:
        """An HTTP/1.0 200 with ``body`` and the extra header lines ``head``."""
        self.reply = lambda conn: conn.sendall(
            b"HTTP/1.0 200 OK\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.close()


def _http(status: bytes, body: bytes = b"", head: bytes = b"") -> Reply:
    return lambda conn: conn.sendall(
        b"HTTP/1.1 " + status + b"\r\n" + head + b"\r\n" + body)


GOOD = b"203.0.113.7\n198.51.100.0/24\n"
#: answers that are not a blocklist, each a different way for a parser or urllib to fail
BROKEN: dict[str, Reply] = {
    "not-http": lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    "header-line-over-64k": _http(b"200 OK", head=b"X-A: " + b"a" * 70_000 + b"\r\n"),
    "over-100-headers": _http(b"200 OK", head=b"X-A: b\r\n" * 120),
    "bad-chunk": _http(b"200 OK", b"zz\r\n", b"Transfer-Encoding: chunked\r\n"),
    "json-nested-deep": _http(b"200 OK", b"[" * 100_000 + b"]" * 100_000,
                              b"Content-Length: 200000\r\nConnection: close\r\n"),
    "json-new-not-a-list": _http(b"200 OK", b'{"new": 5}',
                                 b"Content-Length: 10\r\nConnection: close\r\n"),
    "json-alert-decisions-not-a-list": _http(
        b"200 OK", b'[{"decisions": 7}]', b"Content-Length: 18\r\nConnection: close\r\n"),
    "truncated-body": _http(b"200 OK", b"203.0.113.7\n",
                            b"Content-Length: 5000\r\nConnection: close\r\n"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_answer_keeps_the_last_good_list_and_never_raises(raw, name):
    """Garbage, oversized heads, broken chunking, unknown charsets, hostile JSON and a
    body cut short: the load fails (last_error set), the last good list stays, and
    neither the request (``__call__``, ``in``) nor ``reload`` raises."""
    clock = FakeClock(0.0)
    raw.answer(GOOD)
    bl = Blocklist(raw.url, refresh=10, clock=clock)
    assert len(bl) == 2 and bl.last_error is None
    raw.reply = BROKEN[name]
    clock.advance(10)
    assert bl(SimpleNamespace(client_ip="203.0.113.7")) is True
    assert bl.last_error is not None
    assert bl.reload() is False
    assert "198.51.100.9" in bl and len(bl) == 2


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_url_at_start_starts_empty(raw, name):
    """A URL that answers badly at start is logged and starts empty (as one that is down
    does), whatever the way it is broken: the app still starts."""
    raw.reply = BROKEN[name]
    bl = Blocklist(raw.url, refresh=10, clock=FakeClock(0.0))
    assert len(bl) == 0 and bl.last_error is not None and bl.failures == 1


def test_an_unknown_charset_is_read_as_utf8(raw):
    """A server naming a charset Python does not know (``utf8mb4``) still has its list
    read (lists are ASCII), rather than the load failing on every refresh."""
    raw.answer(GOOD, b"Content-Type: text/plain; charset=utf8mb4\r\n")
    bl = Blocklist(raw.url)
    assert len(bl) == 2 and bl.last_error is None and "203.0.113.7" in bl


def test_the_refresh_thread_survives_a_broken_answer(raw):
    """thread=True: a broken answer does not end the thread; the next good one is
    loaded."""
    raw.answer(b"192.0.2.1\n")
    bl = Blocklist(raw.url, refresh=0.05, retry=0.05, thread=True)
    try:
        raw.reply = BROKEN["not-http"]
        time.sleep(0.3)
        raw.answer(GOOD)
        deadline = time.monotonic() + 5
        while len(bl) != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(bl) == 2 and "203.0.113.7" in bl
    finally:
        bl.close()


def test_a_slow_drip_is_cut_at_the_timeout(raw):
    """A server that sends its body a byte at a time, each within the socket timeout,
    cannot hold the refreshing request much past ``timeout``."""
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not stop.wait(0.1):
            conn.sendall(b"1")

    raw.reply = drip
    try:
        started = time.monotonic()
        bl = Blocklist(raw.url, timeout=0.5)
        took = time.monotonic() - started
    finally:
        stop.set()
    assert bl.last_error is not None and "0.5" in bl.last_error
    assert took < 1.5


def test_a_cross_origin_redirect_does_not_carry_the_headers():
    """A list URL that redirects to another host (or port) gets the list followed, but
    the headers given (the LAPI key) are not sent there."""
    seen: list[dict[str, str]] = []

    class Target(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD)

        def log_message(self, *args: object) -> None:
            pass

    target = ThreadingHTTPServer(("127.0.0.1", 0), Target)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    try:
        with _Redirector(
                f"http://localhost:{target.server_address[1]}/x") as first:
            bl = Blocklist(first.url, headers={"X-Api-Key": "bouncer-secret"})
        assert len(bl) == 2
        assert seen and "x-api-key" not in seen[0]
    finally:
        target.shutdown()
        target.server_close()


def test_a_same_origin_redirect_keeps_the_headers():
    """A redirect to another path of the same origin still sends the headers (the LAPI
    needs its key there)."""
    seen: list[dict[str, str]] = []

    class Both(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/old"):
                self.send_response(301)
                self.send_header("Location", "/new")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Both)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        bl = Blocklist(f"http://127.0.0.1:{httpd.server_address[1]}/old",
                       headers={"X-Api-Key": "k"})
        assert len(bl) == 2 and seen[0]["x-api-key"] == "k"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Redirector(RawServer):
    """A RawServer answering every request with a 302 to ``location``."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.reply = _http(b"302 Found", b"",
                           b"Location: " + location.encode() + b"\r\nContent-Length: 0\r\n")

    def __enter__(self) -> _Redirector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_a_file_over_max_bytes_is_refused(tmp_path: Path):
    """``max_bytes`` bounds a file as it bounds a URL's body: a file over it is refused at
    start (ConfigError) and, later, keeps the last good list."""
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    clock = FakeClock(0.0)
    bl = Blocklist(path, max_bytes=100, refresh=10, clock=clock)
    path.write_text("203.0.113.7\n" * 50)  # 600 bytes
    clock.advance(10)
    assert "192.0.2.1" in bl and "203.0.113.7" not in bl
    assert bl.last_error is not None and "max_bytes" in bl.last_error
    from throttlekit import ConfigError
    with pytest.raises(ConfigError, match="max_bytes"):
        Blocklist(path, max_bytes=100)


def test_a_bad_file_stays_reported_until_it_is_fixed(tmp_path: Path):
    """A file rewritten as something that is not a list fails to load, and keeps failing
    (``last_error`` set) on each retry until it changes: an unchanged bad file is not
    reported as loaded."""
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    clock = FakeClock(0.0)
    bl = Blocklist(path, refresh=10, retry=5, clock=clock)
    path.write_text("<html><body>502 Bad Gateway</body></html>\n")
    clock.advance(10)
    assert "192.0.2.1" in bl and bl.last_error is not None
    clock.advance(5)
    assert "192.0.2.1" in bl
    assert bl.last_error is not None, "the unchanged bad file was reported as loaded"


def test_a_failed_stream_delta_asks_for_the_whole_list_again(raw):
    """CrowdSec's stream counts a delta as pulled once it answered: after a delta that
    failed to load, the next pull asks ``startup=true`` again, so no ban or unban is
    lost."""
    full = b'{"new": [{"value": "192.0.2.1", "type": "ban", "scope": "Ip"}], "deleted": []}'
    raw.answer(full)
    raw.url = raw.url.replace("/list", "/v1/decisions/stream")
    clock = FakeClock(0.0)
    bl = Blocklist(raw.url, refresh=10, clock=clock)
    assert "192.0.2.1" in bl
    raw.reply = BROKEN["truncated-body"]
    clock.advance(10)
    assert "192.0.2.1" in bl and bl.last_error is not None
    raw.answer(full.replace(b"192.0.2.1", b"192.0.2.2"))
    clock.advance(10)
    assert "192.0.2.2" in bl and "192.0.2.1" not in bl
    assert b"startup=true" in raw.heads[-1].split(b"\r\n")[0]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"types": [None]}, "None"),
    ({"types": None}, "None"),
    ({"types": []}, "[]"),
    ({"headers": ["X-Api-Key"]}, "X-Api-Key"),
    ({"headers": {"X-Api-Key": None}}, "None"),
    ({"headers": {"X-Api-Key": "k\r\nX-Evil: 1"}}, "'X-Api-Key': the value has a line break"),
    ({"clock": "monotonic"}, "monotonic"),
], ids=["type-none", "types-none", "types-empty", "headers-list", "header-none",
        "header-crlf", "clock-str"])
def test_wrong_option_types_are_config_errors_at_start(kwargs, named):
    """A tired operator's wrong option types fail at start with a ConfigError naming the
    value, rather than a TypeError, or a URL list that silently never loads."""
    from throttlekit import ConfigError
    with pytest.raises(ConfigError, match=re.escape(named)):
        Blocklist("http://127.0.0.1:9/list", **kwargs)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    """A path that is a named pipe (``<(curl ...)`` from a shell) would block the reading
    request until a writer came: it is refused at start instead, naming the path."""
    import os

    from throttlekit import ConfigError
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def build() -> None:
        try:
            Blocklist(fifo)
            result.append(None)
        except BaseException as exc:  # the outcome, checked below
            result.append(exc)

    t = threading.Thread(target=build, daemon=True)
    t.start()
    t.join(2)
    if t.is_alive():  # unblock the reader so the thread ends
        with open(fifo, "wb"):
            pass
        t.join(2)
        pytest.fail("Blocklist waited for a writer on a FIFO")
    assert isinstance(result[0], ConfigError) and "list.fifo" in str(result[0])


def test_a_chunked_body_is_read_whole(raw):
    """A list sent with ``Transfer-Encoding: chunked`` (no Content-Length), in several
    chunks, is read whole."""
    chunks = [GOOD[:9], GOOD[9:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw.reply = _http(b"200 OK", body, b"Transfer-Encoding: chunked\r\nConnection: close\r\n")
    bl = Blocklist(raw.url)
    assert len(bl) == 2 and bl.last_error is None and "198.51.100.1" in bl
