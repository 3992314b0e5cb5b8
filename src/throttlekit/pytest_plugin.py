"""pytest fixtures for apps that use throttlekit.

Enable them in your ``conftest.py``::

    pytest_plugins = ["throttlekit.pytest_plugin"]

    @pytest.fixture
    def throttlekit_limiters():          # optional: which limiters to manage
        from myapp import limiter
        return [limiter]

Then ask for ``throttlekit_reset`` (every count, block and ban forgotten before and after
the test) or ``throttlekit_disabled`` (limiting switched off for the test), or use them
for every test with ``@pytest.mark.usefixtures("throttlekit_reset")`` or an autouse fixture
of your own. Without a ``throttlekit_limiters`` fixture they act on every limiter that a
decorator or framework integration has been given.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._limiter import Limiter
from .testing import known_limiters, reset_limiter

__all__ = ["throttlekit_disabled", "throttlekit_limiters", "throttlekit_reset"]


@pytest.fixture
def throttlekit_limiters() -> list[Limiter]:
    """The limiters the other fixtures act on (override it to choose)."""
    return known_limiters()


@pytest.fixture
def throttlekit_reset(throttlekit_limiters: list[Limiter]) -> Iterator[list[Limiter]]:
    """Fresh limits for the test: counts, blocks and bans cleared before and after."""
    for lim in throttlekit_limiters:
        reset_limiter(lim)
    yield throttlekit_limiters
    for lim in throttlekit_limiters:
        reset_limiter(lim)


@pytest.fixture
def throttlekit_disabled(throttlekit_limiters: list[Limiter]) -> Iterator[list[Limiter]]:
    """Limiting switched off (``enabled=False``) for the test, restored after."""
    before = [lim.enabled for lim in throttlekit_limiters]
    for lim in throttlekit_limiters:
        lim.enabled = False
    yield throttlekit_limiters
    for lim, was in zip(throttlekit_limiters, before, strict=True):
        lim.enabled = was
