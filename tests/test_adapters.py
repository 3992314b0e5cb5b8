"""The decorators' framework adapters: registered by their contrib module, discovered through
the ``throttlekit.adapters`` entry points for frameworks already imported, and a third-party
adapter through the same route."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, MutableMapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from throttlekit import Limiter, RateLimitExceeded
from throttlekit import _adapters as registry
from throttlekit._adapters import Adapter, Found, discover, find_request, register_adapter
from throttlekit._decorators import FrameworkView, view_of
from throttlekit.testing import FakeClock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """The registry as it was before the test (adapters, entry points, what was loaded)."""
    saved = (registry._adapters, registry._finders, registry._entry_points,
             set(registry._loaded), registry._seen_modules)
    yield
    (registry._adapters, registry._finders, registry._entry_points, loaded,
     registry._seen_modules) = saved
    registry._loaded.clear()
    registry._loaded.update(loaded)


# -- a framework of our own: a request object and its adapter --------------------------------


class ToyRequest:
    def __init__(self, ip: str) -> None:
        self.environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/toy",
                                        "REMOTE_ADDR": ip, "wsgi.input": None}


class ToyRefusal:
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


class ToyAdapter(Adapter):
    name = "toyframework"

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
        for arg in args[:1]:
            if isinstance(arg, ToyRequest):
                return (self, arg.environ, arg)
        return None

    def view(self, lim: Limiter, raw: MutableMapping[str, Any], native: Any) -> FrameworkView:
        return view_of(lim, raw, native)

    def keep(self, raw: MutableMapping[str, Any], native: Any, decision: Any) -> None:
        self.kept.append(decision)

    def refuse(self, lim: Limiter, found: Found, verdict: Any) -> Any:
        return ToyRefusal(verdict.decision.retry_after)


TOY = ToyAdapter()
TOY_MODULE = "toyframework_throttlekit_test"


class FakeEntryPoint:
    """An entry point whose ``load`` counts its calls."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.value = f"{__name__}:{name}"
        self.obj = obj
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        if isinstance(self.obj, BaseException):
            raise self.obj
        return self.obj


@pytest.fixture
def toy_entry_point(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> FakeEntryPoint:
    ep = FakeEntryPoint(TOY_MODULE, TOY)
    registry.use_entry_points([ep])
    monkeypatch.delitem(sys.modules, TOY_MODULE, raising=False)
    return ep


def test_a_third_party_adapter_answers_in_its_framework(clean_registry: None) -> None:
    """A registered adapter finds its request among the arguments: an endpoint limit
    keyed by the client, answered with the adapter's refusal; plain calls still raise."""
    register_adapter(TOY)
    limiter = Limiter(clock=FakeClock(), strategy="fixed_window")

    @limiter.limit("1/minute")
    def endpoint(request: Any) -> str:
        return "ok"

    assert endpoint(ToyRequest("10.0.0.1")) == "ok"
    refused = endpoint(ToyRequest("10.0.0.1"))
    assert isinstance(refused, ToyRefusal) and refused.retry_after == 60
    assert endpoint(ToyRequest("10.0.0.2")) == "ok"  # per client
    assert TOY.kept[-1].allowed and not TOY.kept[-2].allowed
    assert endpoint("plain") == "ok"
    with pytest.raises(RateLimitExceeded):
        endpoint("plain")


def test_entry_point_loaded_only_once_its_framework_is_imported(
        toy_entry_point: FakeEntryPoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoration loads the adapters of imported frameworks only; the first call that no
    adapter claims loads those imported since; each entry point is loaded once."""
    limiter = Limiter(clock=FakeClock(), strategy="fixed_window")

    @limiter.limit("1/minute")
    def endpoint(request: Any) -> str:
        return "ok"

    assert toy_entry_point.loads == 0 and TOY not in registry.adapters()
    monkeypatch.setitem(sys.modules, TOY_MODULE, types.ModuleType(TOY_MODULE))  # imported now
    assert endpoint(ToyRequest("10.0.0.3")) == "ok"  # found after loading the entry point
    assert toy_entry_point.loads == 1 and TOY in registry.adapters()
    assert isinstance(endpoint(ToyRequest("10.0.0.3")), ToyRefusal)
    assert not discover() and toy_entry_point.loads == 1


def test_entry_point_loaded_at_decoration_when_framework_imported(
        toy_entry_point: FakeEntryPoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, TOY_MODULE, types.ModuleType(TOY_MODULE))
    Limiter().limit("1/minute")(lambda request: None)
    assert toy_entry_point.loads == 1 and TOY in registry.adapters()
    assert find_request((ToyRequest("10.0.0.4"),), {}) is not None


def test_a_broken_entry_point_is_logged_and_skipped(
        clean_registry: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEntryPoint(TOY_MODULE, ImportError("no module named toy"))
    registry.use_entry_points([ep])
    monkeypatch.setitem(sys.modules, TOY_MODULE, types.ModuleType(TOY_MODULE))
    limiter = Limiter(clock=FakeClock(), strategy="fixed_window")
    fn = limiter.limit("1/minute")(lambda x: x)
    assert fn(1) == 1 and ep.loads == 1
    assert "cannot load the toyframework_throttlekit_test adapter" in caplog.text
    with pytest.raises(RateLimitExceeded):
        fn(1)


def test_declared_entry_points_are_the_contrib_adapters() -> None:
    """pyproject.toml declares one entry point per framework module, each the ADAPTER its
    contrib module registers, named after that module."""
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][registry.GROUP]
    assert set(declared) == {"flask", "django", "starlette", "fastapi"}
    import django_config  # noqa: F401 - configures Django before its contrib module loads

    for name, value in declared.items():
        adapter = EntryPoint(name, value, registry.GROUP).load()
        assert isinstance(adapter, Adapter) and adapter.name == name
        assert registry.adapter_named(name, load=False) is adapter


def test_depends_without_the_fastapi_adapter_is_a_config_error(clean_registry: None) -> None:
    from throttlekit import ConfigError

    registry._adapters = tuple(a for a in registry._adapters if a.name != "fastapi")
    registry.use_entry_points([])
    with pytest.raises(ConfigError, match=r"throttlekit-web\[fastapi\]"):
        Limiter().depends("1/minute")


def test_missing_entry_points_are_reported(
        clean_registry: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Installed metadata without throttlekit's own entry points (an editable install made
    before they existed) is named in the log with the fix, instead of failing silently."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    registry.use_entry_points(None)
    assert not discover()
    assert "pip install -e . again" in caplog.text
