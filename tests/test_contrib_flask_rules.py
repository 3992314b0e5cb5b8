"""Flask's Throttle runs the limiter's rules (throttles, lists, a rules file) around the app,
once, whether or not the app also wraps itself in a WSGIMiddleware."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from flask import Flask

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.contrib.flask import Throttle
from throttlekit.testing import FakeClock


def _app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    return app


def _codes(app: Flask, n: int, ip: str = "192.0.2.10") -> list[int]:
    c = app.test_client()
    return [c.get("/", environ_base={"REMOTE_ADDR": ip}).status_code for _ in range(n)]


def _limiter() -> Limiter:
    lim = Limiter(clock=FakeClock(1000.0), strategy="fixed_window")
    lim.throttle("per-ip", "2/minute")
    lim.blocklist("bad", ips=["203.0.113.0/24"])
    return lim


def test_throttle_runs_the_limiters_rules() -> None:
    """Throttle(app, limiter): the limiter's throttle refuses the third request (429) and
    its blocklist the listed network (403), as a WSGIMiddleware would."""
    app = _app()
    Throttle(app, _limiter())
    assert _codes(app, 3) == [200, 200, 429]
    assert _codes(app, 1, "203.0.113.5") == [403]


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_wsgi_middleware_of_the_same_limiter_does_not_count_twice(where: str) -> None:
    """The documented pattern (app.wsgi_app = WSGIMiddleware(...)) before or after
    Throttle: one charge per request, not two."""
    app = _app()
    lim = _limiter()
    if where == "before":
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, lim)  # type: ignore[method-assign]
    Throttle(app, lim)
    if where == "after":
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, lim)  # type: ignore[method-assign]
    assert _codes(app, 3) == [200, 200, 429]
    responses = [app.test_client().get("/", environ_base={"REMOTE_ADDR": "192.0.2.99"})]
    assert responses[0].headers.getlist("RateLimit") == [responses[0].headers["RateLimit"]]


def test_rules_false_leaves_the_rules_to_the_caller() -> None:
    app = _app()
    Throttle(app, _limiter(), rules=False)
    assert _codes(app, 3) == [200, 200, 200]


def test_a_rules_file_from_the_config_runs(tmp_path: Path) -> None:
    """THROTTLEKIT_RULES_FILE is loaded into the limiter and its rules run."""
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent('''
        [[throttle]]
        name = "per-ip"
        rates = "1/minute"
    '''))
    app = _app()
    app.config["THROTTLEKIT_RULES_FILE"] = str(path)
    # (a sliding log: the limiter built from the config is on the real clock, where a fixed
    # window resets when a minute boundary falls between the two requests)
    app.config["THROTTLEKIT_STRATEGY"] = "sliding_log"
    Throttle(app)
    assert _codes(app, 2) == [200, 429]


def test_disabled_throttle_runs_no_rule() -> None:
    app = _app()
    app.config["THROTTLEKIT_ENABLED"] = False
    Throttle(app, _limiter())
    assert _codes(app, 3) == [200, 200, 200]


def test_rules_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="rules must be True or False, got 'yes'"):
        Throttle(_app(), _limiter(), rules="yes")  # type: ignore[arg-type]
