"""throttlekit.contrib.flask: Throttle, decorated views, blueprints, config, headers."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask, g, request

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit._decorators import qualified_name
from throttlekit.contrib.flask import RateLimited, Throttle
from throttlekit.testing import FakeClock


def make_app(limiter: Limiter | None = None, **config: Any) -> tuple[Flask, Throttle]:
    app = Flask(__name__)
    app.config.update({f"THROTTLEKIT_{k}": v for k, v in config.items()})
    throttle = Throttle(app, limiter)
    return app, throttle


# The limiters built from the config run on the real clock: where a test counts requests
# exactly, they count on a sliding log (a fixed window resets when a window boundary falls
# between two requests).
EXACT = "sliding_log"


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock, strategy="fixed_window")


def test_decorated_view_answers_429_with_the_middleware_headers(limiter: Limiter) -> None:
    """Over the limit: 429, Retry-After, the RateLimit fields, and the view never runs."""
    app, _ = make_app(limiter)
    runs = []

    @app.get("/items/<int:i>")
    @limiter.limit("2/minute")
    def item(i: int) -> dict[str, int]:
        runs.append(i)
        return {"i": i}

    c = app.test_client()
    first = c.get("/items/1")
    assert first.status_code == 200 and first.json == {"i": 1}
    assert first.headers["RateLimit"].endswith(";r=1;t=60")
    assert c.get("/items/2").status_code == 200
    refused = c.get("/items/3")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "60"
    assert refused.headers["Cache-Control"] == "no-store"
    assert refused.headers["RateLimit-Policy"] == f'"{qualified_name(item)}";q=2;w=60'
    assert runs == [1, 2]  # /items/1 and /items/2 shared one counter; 3 never ran


def test_problem_json_when_the_client_wants_json(limiter: Limiter) -> None:
    """A JSON-accepting client gets RFC 9457 problem details, like the middleware."""
    app, _ = make_app(limiter)

    @app.get("/")
    @limiter.limit("1/minute")
    def index() -> str:
        return "hi"

    c = app.test_client()
    c.get("/")
    r = c.get("/", headers={"Accept": "application/json"})
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    assert r.json["violated-policies"] == [qualified_name(index)]


def test_errorhandler_429_sees_the_decision(limiter: Limiter) -> None:
    """The breach is a werkzeug TooManyRequests: app.errorhandler(429) can answer it."""
    app, _ = make_app(limiter)

    @app.errorhandler(429)
    def too_many(exc: RateLimited) -> tuple[dict[str, Any], int]:
        return {"wait": exc.decision.retry_after}, 429  # type: ignore[union-attr]

    @app.get("/")
    @limiter.limit("1/minute")
    def index() -> str:
        return "hi"

    c = app.test_client()
    c.get("/")
    r = c.get("/")
    assert r.status_code == 429 and r.json == {"wait": 60.0}


def test_decision_in_g(limiter: Limiter) -> None:
    """The view reads its Decision from flask.g.throttle."""
    app, _ = make_app(limiter)

    @app.get("/")
    @limiter.limit("5/minute")
    def index() -> dict[str, int]:
        return {"remaining": g.throttle.remaining}

    c = app.test_client()
    assert [c.get("/").json["remaining"] for _ in range(3)] == [4, 3, 2]


def test_default_limits_per_route_and_application_limits_shared(limiter: Limiter) -> None:
    """Default limits count each route apart; application limits count all together."""
    app, _ = make_app(limiter, DEFAULT_LIMITS="2/minute", APPLICATION_LIMITS="5/minute")
    for name in ("a", "b", "c"):
        app.add_url_rule(f"/{name}", name, lambda: "ok")
    c = app.test_client()
    assert [c.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert [c.get("/b").status_code for _ in range(3)] == [200, 200, 429]
    # 4 admitted so far; the application limit has 1 left for /c
    assert [c.get("/c").status_code for _ in range(2)] == [200, 429]


def test_defaults_add_to_decorated_limits_unless_overridden(limiter: Limiter) -> None:
    """A decorated view has the default limits too, unless override_defaults=True."""
    app, _ = make_app(limiter, DEFAULT_LIMITS="2/minute")

    @app.get("/both")
    @limiter.limit("10/minute")
    def both() -> str:
        return "ok"

    @app.get("/own")
    @limiter.limit("10/minute", override_defaults=True)
    def own() -> str:
        return "ok"

    c = app.test_client()
    assert [c.get("/both").status_code for _ in range(3)] == [200, 200, 429]
    assert [c.get("/own").status_code for _ in range(3)] == [200, 200, 200]


def test_refusal_charges_no_other_limit(limiter: Limiter) -> None:
    """Defaults and the view's own limits are one all-or-nothing check."""
    app, _ = make_app(limiter, DEFAULT_LIMITS="3/minute")

    @app.get("/")
    @limiter.limit("1/minute")
    def index() -> str:
        return "ok"

    c = app.test_client()
    c.get("/")
    for _ in range(5):
        r = c.get("/")
        assert r.status_code == 429
    assert '"default:' in r.headers["RateLimit"] and ";r=2;" in r.headers["RateLimit"]


def test_exempt_view_skips_defaults(limiter: Limiter) -> None:
    """@limiter.exempt removes default and application limits from a view."""
    app, _ = make_app(limiter, DEFAULT_LIMITS="1/minute", APPLICATION_LIMITS="1/minute")

    @app.get("/health")
    @limiter.exempt
    def health() -> str:
        return "ok"

    c = app.test_client()
    assert {c.get("/health").status_code for _ in range(5)} == {200}


def test_blueprint_limits_and_exempt_blueprints(limiter: Limiter) -> None:
    """A limit on a blueprint applies to each of its routes; an exempt blueprint skips
    the defaults; other routes are untouched."""
    app, throttle = make_app(limiter, DEFAULT_LIMITS="3/minute")
    api = Blueprint("api", __name__)
    api.add_url_rule("/x", "x", lambda: "x")
    api.add_url_rule("/y", "y", lambda: "y")
    throttle.limit("1/minute")(api)
    internal = Blueprint("internal", __name__)
    internal.add_url_rule("/z", "z", lambda: "z")
    limiter.exempt(internal)
    app.register_blueprint(api, url_prefix="/api")
    app.register_blueprint(internal, url_prefix="/internal")
    c = app.test_client()
    assert [c.get("/api/x").status_code for _ in range(2)] == [200, 429]
    assert [c.get("/api/y").status_code for _ in range(2)] == [200, 429]
    assert {c.get("/internal/z").status_code for _ in range(5)} == {200}


def test_methods_and_per_method(limiter: Limiter) -> None:
    """methods= limits only those methods; per_method counts each method apart."""
    app, _ = make_app(limiter)

    @app.route("/login", methods=["GET", "POST"])
    @limiter.limit("1/minute", methods=["POST"])
    def login() -> str:
        return "ok"

    @app.route("/res", methods=["GET", "PUT"])
    @limiter.limit("1/minute", per_method=True)
    def res() -> str:
        return "ok"

    c = app.test_client()
    assert {c.get("/login").status_code for _ in range(3)} == {200}
    assert [c.post("/login").status_code for _ in range(2)] == [200, 429]
    assert [c.get("/res").status_code, c.put("/res").status_code] == [200, 200]
    assert c.put("/res").status_code == 429


def test_key_functions_see_the_request(limiter: Limiter) -> None:
    """key= may be a shortcut ("header:X-Api-Key") or a function of the request view,
    whose .request is the Flask request."""
    app, _ = make_app(limiter)

    @app.get("/k")
    @limiter.limit("1/minute", key="header:X-Api-Key")
    def by_header() -> str:
        return "ok"

    @app.get("/u")
    @limiter.limit("1/minute", key=lambda view: view.request.args.get("user"))
    def by_user() -> str:
        return "ok"

    c = app.test_client()
    assert c.get("/k", headers={"X-Api-Key": "a"}).status_code == 200
    assert c.get("/k", headers={"X-Api-Key": "b"}).status_code == 200
    assert c.get("/k", headers={"X-Api-Key": "a"}).status_code == 429
    assert c.get("/u?user=ann").status_code == 200
    assert c.get("/u?user=bob").status_code == 200
    assert c.get("/u?user=ann").status_code == 429


def test_client_ip_follows_trusted_proxies(clock: FakeClock) -> None:
    """THROTTLEKIT_TRUSTED_PROXIES decides whether X-Forwarded-For picks the client."""
    app, throttle = make_app(DEFAULT_LIMITS="1/minute", TRUSTED_PROXIES=1, STRATEGY=EXACT)
    app.add_url_rule("/", "i", lambda: "ok")
    c = app.test_client()
    for ip in ("203.0.113.1", "203.0.113.2"):
        assert c.get("/", headers={"X-Forwarded-For": ip}).status_code == 200
    assert c.get("/", headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
    assert throttle.limiter.resolver_args[0] == 1


def test_config_builds_the_limiter_and_can_disable() -> None:
    """app.config builds the limiter; THROTTLEKIT_ENABLED=False lets everything through."""
    app, throttle = make_app(DEFAULT_LIMITS="1/minute", ENABLED=False,
                             STRATEGY="token_bucket", HEADER_STYLE="legacy")
    app.add_url_rule("/", "i", lambda: "ok")
    c = app.test_client()
    assert {c.get("/").status_code for _ in range(5)} == {200}
    throttle.limiter.enabled = True
    r = c.get("/")
    assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "1"
    assert throttle.limiter.strategy == "token_bucket"
    assert c.get("/").status_code == 429


def test_bad_config_is_a_config_error() -> None:
    """Misspelled settings and bad values are reported at init_app."""
    with pytest.raises(ConfigError, match="DEFAULT_LIMIT"):
        make_app(DEFAULT_LIMIT="1/minute")
    with pytest.raises(ConfigError):
        make_app(STRATEGY="leaky")
    with pytest.raises(ConfigError):
        make_app(DEFAULT_LIMITS="lots")


def test_app_factory_decorators_before_init_app(clock: FakeClock) -> None:
    """throttle.limit works before init_app (app factories) and uses the config's strategy."""
    throttle = Throttle()
    bp = Blueprint("bp", __name__)

    @bp.get("/")
    @throttle.limit("1/minute")
    def index() -> str:
        return "ok"

    app = Flask(__name__)
    app.config["THROTTLEKIT_STRATEGY"] = EXACT
    app.register_blueprint(bp)
    throttle.init_app(app)
    c = app.test_client()
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]


def test_decorated_view_without_throttle(limiter: Limiter) -> None:
    """Without Throttle, the decorator alone limits the view and adds the headers."""
    app = Flask(__name__)

    @app.get("/")
    @limiter.limit("1/minute")
    def index() -> str:
        return "ok"

    c = app.test_client()
    first = c.get("/")
    assert first.status_code == 200 and first.headers["RateLimit"].startswith('"')
    assert c.get("/").status_code == 429


def test_async_view(limiter: Limiter) -> None:
    """An async Flask view is limited the same way."""
    pytest.importorskip("asgiref")
    app, _ = make_app(limiter)

    @app.get("/")
    @limiter.limit("1/minute")
    async def index() -> str:
        return "ok"

    c = app.test_client()
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]


def test_with_the_wsgi_middleware_rules_too(limiter: Limiter) -> None:
    """The rules middleware and the decorators work together: a rule refuses first."""
    limiter.blocklist("bad", lambda r: r.headers.get("user-agent") == "sqlmap")
    app, _ = make_app(limiter)

    @app.get("/")
    @limiter.limit("2/minute")
    def index() -> str:
        return request.environ["throttlekit.verdict"].kind

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, limiter)  # type: ignore[method-assign]
    c = app.test_client()
    assert c.get("/", headers={"User-Agent": "sqlmap"}).status_code == 403
    assert c.get("/").data == b"allowed"
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("with_throttle", [True, False])
def test_errorhandler_429_response_gets_the_rate_limit_headers(limiter: Limiter,
                                                               with_throttle: bool) -> None:
    """A response made by errorhandler(429) still carries Retry-After and RateLimit headers."""
    app = Flask(__name__)
    if with_throttle:
        Throttle(app, limiter)

    @app.errorhandler(429)
    def too_many(exc: RateLimited) -> tuple[dict[str, Any], int]:
        return {"slow": True}, 429

    @app.get("/")
    @limiter.limit("1/minute")
    def index() -> str:
        return "hi"

    c = app.test_client()
    c.get("/")
    r = c.get("/")
    assert r.status_code == 429 and r.json == {"slow": True}
    assert r.headers["Retry-After"] == "60" and "RateLimit-Policy" in r.headers
    assert r.headers["Content-Type"] == "application/json"


def test_rules_file_setting(tmp_path: Any) -> None:
    """THROTTLEKIT_RULES_FILE loads a rules file into the limiter built from the config."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "all"\nrates = "1/minute"\n')
    app, throttle = make_app(RULES_FILE=str(rules), STRATEGY=EXACT)

    @app.get("/")
    def index() -> str:
        return "hi"

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, throttle.limiter)  # type: ignore[method-assign]
    c = app.test_client()
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]
    with pytest.raises(ConfigError):
        make_app(RULES_FILE=str(tmp_path / "missing.toml"))


def test_multiworker_warning_points_at_the_setup_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory-store warning names the user's Throttle(app) line, not throttlekit's code."""
    import throttlekit._workers as workers

    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with pytest.warns(RuntimeWarning, match="workers") as caught:
        Throttle(Flask(__name__), Limiter())
    assert [w.filename for w in caught] == [__file__]
