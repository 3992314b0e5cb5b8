"""A strategy that is not a strategy name is a ConfigError naming it, at configuration
time, whichever entry takes it; ``None`` (the default) means the limiter's strategy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter, storage_from_url
from throttlekit._limitspec import make_spec

BAD = ["", 0, False, "Fixed_Window", "leaky_bucket", ["fixed_window"]]


def _entries(lim: Limiter) -> dict[str, Callable[[Any], object]]:
    """Every entry taking a strategy, called with one."""
    return {
        "hit": lambda s: lim.hit("k", "5/minute", strategy=s),
        "hit-positional": lambda s: lim.hit("k", "5/minute", s),
        "test": lambda s: lim.test("k", "5/minute", strategy=s),
        "ahit": lambda s: asyncio.run(lim.ahit("k", "5/minute", strategy=s)),
        "atest": lambda s: asyncio.run(lim.atest("k", "5/minute", strategy=s)),
        "plan": lambda s: lim.plan("5/minute", strategy=s),
        "throttle": lambda s: lim.throttle("t", "5/minute", strategy=s),
        "limit": lambda s: lim.limit("5/minute", strategy=s),
        "limit-rates-function": lambda s: lim.limit(lambda: "5/minute", strategy=s),
        "shared_limit": lambda s: lim.shared_limit("5/minute", "scope", strategy=s),
        "limit-no-limiter-yet": lambda s: make_spec(None, "5/minute", strategy=s),
        "limit-no-limiter-yet-rates-function": lambda s: make_spec(
            None, lambda: "5/minute", strategy=s),
    }


ENTRIES = list(_entries(Limiter()))


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Limiter]:
    if request.param == "memory":
        yield Limiter()
        return
    prefix = request.getfixturevalue("redis_prefix")
    store = storage_from_url("redis://127.0.0.1:6379/0", prefix=prefix)
    yield Limiter(store)
    store.close()


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_the_limiter_refuses_a_bad_default_strategy(bad: object) -> None:
    with pytest.raises(ConfigError, match="strategy") as err:
        Limiter(strategy=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_every_entry_refuses_a_bad_strategy_naming_it(limiter: Limiter, entry: str,
                                                      bad: object) -> None:
    call = _entries(limiter)[entry]
    with pytest.raises(ConfigError, match="strategy") as err:
        call(bad)
    assert repr(bad) in str(err.value)
    # nothing was counted under it (test: what a hit would leave)
    assert limiter.test("k", "5/minute").remaining == 4


@pytest.mark.parametrize("entry", ENTRIES)
def test_none_means_the_limiters_strategy(limiter: Limiter, entry: str) -> None:
    _entries(limiter)[entry](None)


def test_none_on_hit_counts_under_the_limiters_strategy() -> None:
    lim = Limiter(strategy="sliding_log")
    lim.hit("k", "2/minute", strategy=None)
    lim.hit("k", "2/minute", strategy="sliding_log")
    assert not lim.test("k", "2/minute").allowed
    assert lim.test("k", "2/minute", strategy="fixed_window").remaining == 1


def test_none_is_the_default_strategy_for_the_limiter_and_its_settings() -> None:
    """None means the default wherever a strategy is asked for: the limiter's own (so an
    integration setting left unset, ``THROTTLEKIT_STRATEGY = None``, is the default too)."""
    flask = pytest.importorskip("flask")
    from throttlekit.contrib.flask import Throttle

    assert Limiter(strategy=None).strategy == "fixed_window"
    app = flask.Flask("none")
    app.config["THROTTLEKIT_STRATEGY"] = None
    assert Throttle(app).limiter.strategy == "fixed_window"
