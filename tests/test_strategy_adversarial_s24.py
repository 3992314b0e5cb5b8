"""A strategy through the rules file and the framework integrations, as a tired operator
writes it: a bad value is an error naming it when the configuration is read; ``None`` (a
decorator's default) is the strategy of the limiter serving the request, whichever that is
by then (settings overridden, a limiter built after the decorator)."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client
from django.urls import path

from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import ConfigError, Limiter, RateLimitExceeded
from throttlekit._rulesfile import RulesFileError
from throttlekit.contrib import django as tk
from throttlekit.testing import FakeClock


@tk.limit("2/minute")  # at import: no limiter yet, strategy None
def _view(request: Any) -> HttpResponse:
    return HttpResponse("ok")


@pytest.fixture
def urls() -> Iterator[types.ModuleType]:
    with fresh_urlconf() as module:
        module.urlpatterns = [path("v", _view)]  # type: ignore[attr-defined]
        yield module


def _statuses(n: int) -> list[int]:
    c = Client()
    return [c.get("/v").status_code for _ in range(n)]


def test_an_import_time_decorator_follows_the_limiter_of_the_settings(urls: Any) -> None:
    """The same decorated view under one limiter, then another (override_settings, as a
    test suite does): the second limiter's token bucket (burst 4) is what counts."""
    with throttlekit_settings(LIMITER=Limiter(strategy="fixed_window", clock=FakeClock())):
        assert _statuses(3) == [200, 200, 429]
    with throttlekit_settings(LIMITER=Limiter(strategy="token_bucket", burst=4)):
        assert _statuses(5) == [200] * 4 + [429]


def test_an_import_time_token_bucket_takes_the_limiters_burst(urls: Any) -> None:
    """``strategy="token_bucket"`` without a burst, decorated before the limiter exists,
    gets the limiter's burst as ``Limiter.limit`` gives it (default: the rate's limit)."""

    @tk.limit("2/minute", strategy="token_bucket")
    def bucket(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("v", bucket)]
    lim = Limiter(burst=4)
    with throttlekit_settings(LIMITER=lim):
        assert _statuses(5) == [200] * 4 + [429]
    alike = Limiter(burst=4).limit("2/minute", strategy="token_bucket")(lambda: "ok")
    answers = []
    for _ in range(5):
        try:
            answers.append(alike())
        except RateLimitExceeded:
            answers.append("refused")
    assert answers == ["ok"] * 4 + ["refused"]


def test_a_bad_strategy_setting_fails_as_the_middleware_loads(urls: Any) -> None:
    for bad in ("", 0, "Fixed_Window"):
        with throttlekit_settings(STRATEGY=bad), pytest.raises(ConfigError) as err:
            Client().get("/v")
        assert f"unknown strategy {bad!r}" in str(err.value)
    with throttlekit_settings(STRATEGY=None):  # (None: the default strategy)
        assert Client().get("/v").status_code == 200


@pytest.mark.parametrize(("table", "value"), [("[[throttle]]", '""'), ("[limiter]", '""'),
                                              ("[[throttle]]", '"Fixed_Window"')])
def test_a_rules_file_strategy_is_reported_on_its_line(tmp_path: Path, table: str,
                                                       value: str) -> None:
    lines = ['[[throttle]]', 'name = "a"', 'rates = "1/second"']
    lines[3 if table == "[[throttle]]" else 0:0] = (
        [f"strategy = {value}"] if table == "[[throttle]]" else ["[limiter]",
                                                                 f"strategy = {value}"])
    f = tmp_path / "rules.toml"
    f.write_text("\n".join(lines) + "\n")
    lim = Limiter()
    with pytest.raises(RulesFileError) as err:
        lim.load_rules(f)
    assert f"unknown strategy {value.strip(chr(34))!r}" in str(err.value)
    assert f"{f}:{2 if table == '[limiter]' else 4}:" in str(err.value)


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("false", "False")])
def test_a_rules_file_non_string_strategy_is_shown_as_written(tmp_path: Path, value: str,
                                                              shown: str) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(f'[[throttle]]\nname = "a"\nrates = "1/second"\nstrategy = {value}\n')
    with pytest.raises(RulesFileError) as err:
        Limiter().load_rules(f)
    assert f"unknown strategy {shown}:" in str(err.value) or (
        f"unknown strategy {shown}\n" in str(err.value))


def test_a_drf_throttle_follows_the_limiter_of_the_settings(urls: Any) -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Burst(tk.ThrottlekitThrottle):  # type: ignore[name-defined,misc]
        rate = "2/minute"

    class Items(APIView):
        throttle_classes = [Burst]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    urls.urlpatterns = [path("v", Items.as_view())]
    with throttlekit_settings(LIMITER=Limiter(strategy="fixed_window", clock=FakeClock())):
        assert _statuses(3) == [200, 200, 429]
    with throttlekit_settings(LIMITER=Limiter(strategy="token_bucket", burst=4)):
        assert _statuses(5) == [200] * 4 + [429]


def test_flask_app_factory_each_app_its_own_settings() -> None:
    import flask

    from throttlekit.contrib.flask import Throttle

    throttle = Throttle()

    @throttle.limit("2/minute")
    def index() -> str:
        return "ok"

    def create_app(**config: Any) -> Any:
        app = flask.Flask("factory")
        app.config.update({f"THROTTLEKIT_{k}": v for k, v in config.items()})
        app.add_url_rule("/", view_func=index)
        throttle.init_app(app)
        return app

    # (a sliding log: the app's limiter is on the real clock, where a fixed window resets
    # when a minute boundary falls between two of the requests)
    first = create_app(STRATEGY="sliding_log").test_client()
    assert [first.get("/").status_code for _ in range(3)] == [200, 200, 429]
    second = create_app(STRATEGY="token_bucket").test_client()
    assert throttle.limiter.strategy == "token_bucket"
    assert [second.get("/").status_code for _ in range(3)] == [200, 200, 429]  # its own


def test_a_bad_burst_is_refused_whatever_was_cached_before() -> None:
    lim = Limiter()
    lim.hit("k", "5/minute", "token_bucket", burst=2)
    with pytest.raises(ConfigError, match="burst"):
        lim.hit("k", "5/minute", "token_bucket", burst=2.0)  # type: ignore[arg-type]
