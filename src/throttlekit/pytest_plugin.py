"""pytest fixtures for apps that use throttlekit.

With throttlekit installed they are available in every test (a ``pytest11`` plugin);
``from throttlekit.pytest_plugin import throttlekit_reset`` in a test module or
``pytest_plugins = ["throttlekit.pytest_plugin"]`` in ``conftest.py`` work as well.
To choose the limiters they act on, define::

    @pytest.fixture
    def throttlekit_limiters():
        from myapp import limiter
        return [limiter]

Then ask for ``throttlekit_reset`` (every count, block and ban forgotten before and after
the test; on Redis, the keys under the storage's prefix) or ``throttlekit_disabled``
(limiting switched off for the test), or use them for every test with
``@pytest.mark.usefixtures("throttlekit_reset")`` or an autouse fixture of your own.
Without a ``throttlekit_limiters`` fixture they act on every limiter that a decorator or
framework integration has been given.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._limiter import Limiter
from .testing import clear_limiter, known_limiters

__all__ = ["throttlekit_disabled", "throttlekit_limiters", "throttlekit_reset"]


@pytest.fixture
def throttlekit_limiters() -> list[Limiter]:
    """The limiters the other fixtures act on (override it to choose)."""
    return known_limiters()


def _limiters(request: pytest.FixtureRequest) -> list[Limiter]:
    # looked up by name, so the fixtures work when imported alone into a test module
    try:
        return list(request.getfixturevalue("throttlekit_limiters"))
    except pytest.FixtureLookupError:
        return known_limiters()


@pytest.fixture
def throttlekit_reset(request: pytest.FixtureRequest) -> Iterator[list[Limiter]]:
    """Fresh limits for the test: counts, blocks and bans cleared before and after."""
    limiters = _limiters(request)
    for lim in limiters:
        clear_limiter(lim)
    yield limiters
    for lim in limiters:
        clear_limiter(lim)


@pytest.fixture
def throttlekit_disabled(request: pytest.FixtureRequest) -> Iterator[list[Limiter]]:
    """Limiting switched off (``enabled=False``) for the test, restored after."""
    limiters = _limiters(request)
    before = [lim.enabled for lim in limiters]
    for lim in limiters:
        lim.enabled = False
    yield limiters
    for lim, was in zip(limiters, before, strict=True):
        lim.enabled = was
