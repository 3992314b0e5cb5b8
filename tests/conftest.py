from __future__ import annotations

import contextlib
import gc
import importlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backends import NAMES
from throttlekit import Limiter, RequestView, Verdict
from throttlekit._decision import Decision
from throttlekit.testing import FakeClock

# The hypothesis profiles (fast, ci, dev) and the suite's selection: ../conftest.py.

BACKEND_MODULES = {name: importlib.import_module(f"backends.{name}") for name in NAMES}


def _source_adapter_entry_points() -> None:
    """The decorators find their framework adapters through the ``throttlekit.adapters``
    entry points. When the installed metadata predates them (an editable install made
    before they were declared: ``pip install -e .`` again fixes it), use this checkout's
    pyproject.toml, so the tests run what a fresh install does."""
    from importlib.metadata import EntryPoint, entry_points
    from pathlib import Path

    from throttlekit import _adapters

    if list(entry_points(group=_adapters.GROUP)):
        return
    try:
        import tomllib
    except ImportError:  # pragma: no cover - 3.10
        import tomli as tomllib
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"][_adapters.GROUP]
    _adapters.use_entry_points(
        EntryPoint(name, value, _adapters.GROUP) for name, value in declared.items())


_source_adapter_entry_points()


@pytest.fixture(scope="session")
def _backend_contexts() -> Iterator[dict[str, Any]]:
    """Backends' session contexts, started lazily and closed at the end of the session."""
    with contextlib.ExitStack() as stack:
        contexts: dict[str, Any] = {}

        def get(name: str) -> Any:
            if name not in contexts:
                contexts[name] = stack.enter_context(BACKEND_MODULES[name].session())
            return contexts[name]

        yield {"get": get}


@pytest.fixture(
    params=[pytest.param(n, marks=BACKEND_MODULES[n].MARKS, id=n) for n in NAMES]
)
def backend(request: pytest.FixtureRequest, _backend_contexts: dict[str, Any]) -> Any:
    """The backend module under test (parametrised over every backend)."""
    module = BACKEND_MODULES[request.param]
    module.ctx = _backend_contexts["get"](request.param)
    return module


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_limiter(backend: Any, clock: FakeClock) -> Callable[..., Limiter]:
    """Build a Limiter on a fresh storage of the backend under test, on the fake clock."""
    made: list[Any] = []

    def factory(strategy: str | None = None, **kwargs: Any) -> Limiter:
        if strategy is not None and strategy not in backend.STRATEGIES:
            pytest.skip(f"{backend.__name__} does not support {strategy}")
        storage = backend.make_storage(backend.ctx)
        made.append(storage)
        kwargs.setdefault("clock", clock)
        if strategy is not None:
            kwargs["strategy"] = strategy
        return Limiter(storage, **kwargs)

    yield factory
    for storage in made:
        storage.close()


@pytest.fixture
def redis_prefix(_backend_contexts: dict[str, Any]) -> str:
    """A key prefix of this test's own on the shared Redis (skipped when none answers,
    failed under CI=true); the session deletes its keys (never a flush)."""
    ctx = _backend_contexts["get"]("redis")
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    ctx.prefixes.append(prefix)
    return prefix


@pytest.fixture
def garbage() -> Iterator[Callable[[], list[str]]]:
    """``found()``: the throttlekit objects and environs/scopes only a reference cycle kept
    alive since the fixture began (the collector off meanwhile)."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def found() -> list[str]:
        gc.collect()
        names = []
        for obj in gc.garbage:
            cls = type(obj)  # (isinstance would call dead weak proxies in there)
            if issubclass(cls, (RequestView, Verdict, Decision)):
                names.append(cls.__name__)
            elif cls is dict and (
                "throttlekit.verdict" in obj or "throttlekit.owner" in obj
            ):
                names.append("environ/scope")
        gc.garbage.clear()
        return names

    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
