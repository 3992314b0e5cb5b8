"""The memory store against a tired operator's arguments: wrong types are ConfigErrors
naming the value, never a TypeError or a ban of the wrong length."""

from __future__ import annotations

import pytest

from throttlekit import ConfigError, Limiter
from throttlekit.storage import MemoryStorage


@pytest.mark.parametrize("ttl", ["60", True, [60]], ids=["str", "bool", "list"])
def test_a_block_ttl_of_the_wrong_type_is_a_config_error(ttl):
    """``limiter.block(key, ttl="60")`` or ``ttl=True`` (a 1-second ban, by accident)
    fails with a ConfigError naming the value, and blocks nothing."""
    lim = Limiter(MemoryStorage())
    with pytest.raises(ConfigError, match="ttl"):
        lim.block("192.0.2.1", ttl)
    assert lim.storage.blocked() == []
