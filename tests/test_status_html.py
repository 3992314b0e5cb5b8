"""The status endpoint's HTML page: content negotiation, the same access rules as the JSON,
a strict CSP whose hashes match the inline style and script, and no way for a value from
traffic to become markup."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from throttlekit import Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor
from throttlekit.monitor.status import StatusEndpoint
from throttlekit.testing import FakeClock

TOKEN = "a-status-token-of-enough-length"
HOSTILE = "</script><script>alert(1)</script><!--"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def site() -> tuple[Limiter, Monitor]:
    limiter = Limiter(clock=FakeClock())
    limiter.throttle("per-ip", "100/second")
    monitor = Monitor(limiter)
    mw = WSGIMiddleware(app, limiter)
    for i in range(5):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/home", "QUERY_STRING": "",
                   "REMOTE_ADDR": f"192.0.2.{i}", "HTTP_USER_AGENT": HOSTILE,
                   "wsgi.url_scheme": "http", "SERVER_NAME": "x", "SERVER_PORT": "80"}
        list(mw(environ, lambda *a: None))
    return limiter, monitor


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_html_by_accept_or_format_json_otherwise() -> None:
    limiter, monitor = site()
    endpoint = StatusEndpoint(monitor, limiter=limiter)
    for accept, query, html in [
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", True),
        (None, "format=html", True),
        ("text/html", "format=json", False),
        ("application/json", "", False),
        (None, "", False),
    ]:
        code, headers, body = endpoint.respond("GET", "127.0.0.1", None, query=query,
                                               accept=accept)
        kind = dict(headers)["Content-Type"]
        assert code == 200 and kind.startswith("text/html" if html else "application/json")
        if not html:
            json.loads(body)


def test_the_page_follows_the_json_access_rules() -> None:
    _, monitor = site()
    endpoint = StatusEndpoint(monitor, token=TOKEN)
    code, headers, body = endpoint.respond("GET", "127.0.0.1", None, accept="text/html")
    assert code == 401 and body == b'{"error": "unauthorized"}'
    assert dict(headers)["WWW-Authenticate"] == 'Bearer realm="throttlekit"'
    code, _, _ = endpoint.respond("GET", "127.0.0.1", f"Bearer {TOKEN}", accept="text/html")
    assert code == 200
    code, _, _ = StatusEndpoint(monitor).respond("GET", "203.0.113.1", None, query="format=html")
    assert code == 403
    code, _, body = endpoint.respond("HEAD", "127.0.0.1", f"Bearer {TOKEN}", accept="text/html")
    assert code == 200 and body == b""


def test_a_strict_csp_whose_hashes_match_the_inline_code() -> None:
    _, monitor = site()
    _, headers, body = StatusEndpoint(monitor).respond("GET", "::1", None, query="format=html")
    page = body.decode()
    csp = dict(headers)["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    [style] = re.findall(r"<style>(.*?)</style>", page, re.S)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1
    assert f"style-src {sha256(style)};" in csp and f"script-src {sha256(scripts[0])};" in csp
    assert not re.search(r"\b(src|href)=", page)  # nothing loaded from anywhere
    assert dict(headers)["X-Content-Type-Options"] == "nosniff"


def test_values_from_traffic_cannot_become_markup() -> None:
    _, monitor = site()
    _, _, body = StatusEndpoint(monitor).respond("GET", "::1", None, query="format=html")
    page = body.decode()
    assert HOSTILE not in page and "<!--" not in page
    assert page.count("</script>") == 2 and page.count("<script") == 2
    [data] = re.findall(r'<script id="tk-data" type="application/json">(.*?)</script>', page,
                        re.S)
    assert "<" not in data and ">" not in data
    document = json.loads(data)
    assert document["dimensions"]["user_agent"]["top"][0][0] == HOSTILE
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
    assert "document.write" not in page


def test_the_admission_limit_is_in_the_document() -> None:
    limiter, monitor = site()
    assert "admission" not in StatusEndpoint(monitor, limiter=limiter).payload()
    limiter.admission(initial_limit=12)
    admission = StatusEndpoint(monitor, limiter=limiter).payload()["admission"]
    assert admission["limit"] == 12 and admission["inflight"] == 0
    assert set(admission) == {"limit", "inflight", "min_latency", "sample_latency", "shed",
                              "probing"}
