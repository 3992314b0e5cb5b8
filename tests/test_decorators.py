"""limiter.limit / shared_limit / exempt on plain functions and coroutines."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from downable import DownableStore
from throttlekit import ConfigError, Limiter, RateLimitExceeded
from throttlekit._limitspec import group_of
from throttlekit._workers import warn_memory_multiworker, worker_count
from throttlekit.testing import FakeClock, reset_limiter

# throttlekit.pytest_plugin is loaded through its pytest11 entry point (pyproject.toml)
pytest_plugins = ["pytester"]


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock, strategy="fixed_window")


def test_plain_function_raises_with_the_decision(limiter: Limiter) -> None:
    """The call over the limit raises RateLimitExceeded carrying the refusing Decision."""

    @limiter.limit("2/minute")
    def work() -> str:
        return "done"

    assert [work(), work()] == ["done", "done"]
    with pytest.raises(RateLimitExceeded) as info:
        work()
    d = info.value.decision
    assert not d.allowed and d.limit == 2 and d.remaining == 0 and d.retry_after == 60.0


def test_refused_call_does_not_run_the_function(limiter: Limiter) -> None:
    """A refused call never reaches the function body."""
    calls = []

    @limiter.limit("1/minute")
    def work() -> None:
        calls.append(1)

    work()
    with pytest.raises(RateLimitExceeded):
        work()
    assert calls == [1]


def test_key_from_the_call_arguments(limiter: Limiter) -> None:
    """key(*args, **kwargs) picks the counter: each user has their own."""

    @limiter.limit("1/minute", key=lambda user, **_: user)
    def send(user: str, text: str = "") -> str:
        return user

    assert send("ann") == "ann"
    assert send("bob", text="hi") == "bob"
    with pytest.raises(RateLimitExceeded):
        send("ann", text="again")


def test_key_returning_none_skips_the_limit(limiter: Limiter) -> None:
    """A key function returning None exempts that call."""

    @limiter.limit("1/minute", key=lambda admin: None if admin else "user")
    def act(admin: bool) -> bool:
        return admin

    for _ in range(5):
        assert act(True)
    act(False)
    with pytest.raises(RateLimitExceeded):
        act(False)


def test_cost_callable(limiter: Limiter) -> None:
    """cost may be a function of the call's arguments."""

    @limiter.limit("10/minute", cost=lambda n: n)
    def fetch(n: int) -> int:
        return n

    assert fetch(6) == 6
    with pytest.raises(RateLimitExceeded) as info:
        fetch(5)
    assert info.value.decision.remaining == 4
    assert fetch(4) == 4


def test_window_passes_with_the_clock(limiter: Limiter, clock: FakeClock) -> None:
    """After the window, calls are admitted again."""

    @limiter.limit("1/second")
    def ping() -> int:
        return 1

    ping()
    with pytest.raises(RateLimitExceeded):
        ping()
    clock.advance(1)
    assert ping() == 1


def test_stacked_limits_all_apply_and_none_is_charged_on_refusal(limiter: Limiter,
                                                                  clock: FakeClock) -> None:
    """Several decorators are several limits; a refused call charges none of them."""

    @limiter.limit("3/minute")
    @limiter.limit("2/second")
    def work() -> int:
        return 1

    work()
    work()
    with pytest.raises(RateLimitExceeded) as info:
        work()  # the per-second limit refuses ...
    assert info.value.decision.rate.period == 1.0
    clock.advance(1)
    work()  # ... and the minute limit was not charged for the refusal: 3rd of 3
    with pytest.raises(RateLimitExceeded) as info:
        work()
    assert info.value.decision.rate.period == 60.0
    assert len(group_of(work).specs) == 2  # type: ignore[union-attr]


def test_same_name_in_different_scopes_do_not_share(limiter: Limiter) -> None:
    """Counters are named by module + qualname, not the bare function name."""

    def make() -> object:
        @limiter.limit("1/minute")
        def index() -> int:
            return 1
        return index

    class A:
        @staticmethod
        @limiter.limit("1/minute")
        def index() -> int:
            return 1

    class B:
        @staticmethod
        @limiter.limit("1/minute")
        def index() -> int:
            return 2

    assert A.index() == 1 and B.index() == 2
    with pytest.raises(RateLimitExceeded):
        A.index()


def test_shared_limit_is_one_counter_across_functions(limiter: Limiter) -> None:
    """shared_limit with one scope counts every decorated function together."""
    search = limiter.shared_limit("3/minute", scope="search")

    @search
    def by_name() -> str:
        return "n"

    @search
    def by_tag() -> str:
        return "t"

    by_name()
    by_tag()
    by_name()
    with pytest.raises(RateLimitExceeded):
        by_tag()


def test_signature_name_and_docstring_are_kept(limiter: Limiter) -> None:
    """The wrapper looks like the function to introspection."""

    def original(a: int, b: str = "x", *, c: float = 1.0) -> str:
        """Doc."""
        return f"{a}{b}{c}"

    wrapped = limiter.limit("5/minute")(original)
    assert wrapped.__name__ == "original" and wrapped.__doc__ == "Doc."
    sig = inspect.signature(wrapped)
    params = dict(sig.parameters)
    # In a process where FastAPI is loaded, a function without a request parameter gains
    # an optional keyword-only one, so that as an endpoint FastAPI passes the request.
    hidden = params.pop("throttlekit_request", None)
    assert hidden is None or (hidden.kind is inspect.Parameter.KEYWORD_ONLY
                              and hidden.default is None)
    assert hidden is not None or "fastapi" not in sys.modules
    assert sig.replace(parameters=list(params.values())) == inspect.signature(original)
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    assert wrapped(1, c=2.0) == "1x2.0"


def test_coroutine_is_limited_and_stays_a_coroutine_function(limiter: Limiter) -> None:
    """An async function stays async and is limited per call."""

    @limiter.limit("1/minute")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert inspect.iscoroutinefunction(fetch)

    async def main() -> None:
        assert await fetch() == "ok"
        with pytest.raises(RateLimitExceeded):
            await fetch()

    asyncio.run(main())


def test_disabled_limiter_lets_everything_through(clock: FakeClock) -> None:
    """Limiter(enabled=False) switches the decorators off; enabling turns them back on."""
    limiter = Limiter(clock=clock, enabled=False)

    @limiter.limit("1/minute")
    def work() -> int:
        return 1

    assert sum(work() for _ in range(10)) == 10
    limiter.enabled = True
    work()
    with pytest.raises(RateLimitExceeded):
        work()


def test_bad_arguments_are_config_errors(limiter: Limiter) -> None:
    """Bad rates, strategies, costs, methods and keys fail at decoration time."""
    for kwargs in ({"strategy": "nope"}, {"cost": -1}, {"cost": "2"}, {"methods": ["FETCH"]},
                   {"key": "cookie"}, {"per_method": "yes"}, {"scope": ""}):
        with pytest.raises(ConfigError):
            limiter.limit("1/minute", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        limiter.limit("often")
    with pytest.raises(ConfigError, match="class"):
        limiter.limit("1/minute")(type("View", (), {}))


def test_key_function_error_is_logged_and_the_limit_skipped(limiter: Limiter,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """A raising key function never breaks the call (policy "local": skip the limit)."""

    @limiter.limit("1/minute", key=lambda: 1 / 0)
    def work() -> int:
        return 1

    assert work() + work() == 2
    assert "raised ZeroDivisionError" in caplog.text


def test_limits_read_the_same_and_emit_no_events_while_someone_listens(
        clock: FakeClock) -> None:
    """The limits conclude as the rules' throttles (the refusal waiting longest, the other
    limits reported uncharged), whether or not someone listens to the limiter's events;
    events tell what the rules did, so the limits emit none."""

    def refusal(limiter: Limiter) -> tuple[object, ...]:
        @limiter.limit("3/minute")
        @limiter.limit("2/second; 5/hour")
        def work() -> int:
            return 1

        work()
        work()
        with pytest.raises(RateLimitExceeded) as info:
            work()
        v = info.value.verdict  # type: ignore[attr-defined]
        return v.rule, v.key, v.decision, v.policies, v.degraded

    events: list[object] = []
    heard = Limiter(clock=clock)
    heard.on(events.append)
    rule, _key, decision, policies, degraded = refusal(Limiter(clock=clock))
    assert refusal(heard) == (rule, _key, decision, policies, degraded)
    assert events == []
    assert rule.endswith("work#1") and decision.rate.period == 1.0  # type: ignore[attr-defined]
    # the minute and the hour were not charged for the refusal: they have 1 and 3 left
    assert [d.remaining for _, d in policies] == [1, 0, 3]  # type: ignore[attr-defined]
    assert not degraded


def test_an_outage_under_deny_refuses_the_same_while_someone_listens(
        clock: FakeClock) -> None:
    """The ``"deny"`` policy's refusal of a limit is the engine's, listeners or not."""
    refusals = []
    for listening in (False, True):
        store = DownableStore()
        limiter = Limiter(store, clock=clock, on_storage_error="deny", retry_interval=7)
        if listening:
            limiter.on(lambda event: None)

        @limiter.limit("5/minute; 100/hour")
        def work() -> int:
            return 1

        store.down = True
        with pytest.raises(RateLimitExceeded) as info:
            work()
        v = info.value.verdict  # type: ignore[attr-defined]
        refusals.append((v.rule, v.decision, v.degraded))
    assert refusals[0] == refusals[1]
    assert refusals[0][0] == "storage-unavailable" and refusals[0][1].retry_after == 7.0


def test_key_function_error_refuses_under_deny(clock: FakeClock) -> None:
    """With on_storage_error="deny", a raising key function refuses the call."""
    limiter = Limiter(clock=clock, on_storage_error="deny")

    @limiter.limit("5/minute", key=lambda: 1 / 0)
    def work() -> int:
        return 1

    with pytest.raises(RateLimitExceeded):
        work()


def test_exempt_plain_function_keeps_its_own_limits(limiter: Limiter) -> None:
    """exempt only removes default limits; a decorated limit still applies."""

    @limiter.exempt
    @limiter.limit("1/minute")
    def work() -> int:
        return 1

    work()
    with pytest.raises(RateLimitExceeded):
        work()
    assert group_of(work).exempt  # type: ignore[union-attr]


def test_reset_limiter_forgets_counts(limiter: Limiter) -> None:
    """testing.reset_limiter gives every key a fresh quota."""

    @limiter.limit("1/minute")
    def work() -> int:
        return 1

    work()
    reset_limiter(limiter)
    assert work() == 1


def test_reset_limiter_refuses_shared_stores() -> None:
    """reset_limiter never wipes a shared store."""
    from throttlekit.storage import Storage

    class Remote(Storage):  # a stand-in type: only its class matters here
        remote = True

        def apply(self, *a, **k):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def reset(self, keys):  # type: ignore[no-untyped-def]
            pass

        def block(self, *a, **k):  # type: ignore[no-untyped-def]
            pass

        def unblock(self, key):  # type: ignore[no-untyped-def]
            return False

        def blocked(self, now=None):  # type: ignore[no-untyped-def]
            return []

    with pytest.raises(ConfigError, match="memory"):
        reset_limiter(Limiter(Remote()))


@pytest.fixture
def decorated() -> tuple[Limiter, object]:
    limiter = Limiter()

    @limiter.limit("1/minute")
    def work() -> int:
        return 1

    return limiter, work


def test_pytest_fixture_disables(decorated: tuple[Limiter, object],
                                 throttlekit_disabled: list[Limiter]) -> None:
    """throttlekit_disabled switches off every limiter the decorators know."""
    limiter, work = decorated
    assert limiter in throttlekit_disabled and not limiter.enabled
    assert sum(work() for _ in range(5)) == 5  # type: ignore[operator]


def test_pytest_fixture_resets(decorated: tuple[Limiter, object],
                               pytester: pytest.Pytester) -> None:
    """Fixtures imported alone into a test module reset and disable the known limiters."""
    pytester.makepyfile(test_alone="""
        from throttlekit import Limiter
        from throttlekit.pytest_plugin import throttlekit_disabled, throttlekit_reset

        limiter = Limiter()

        @limiter.limit("1/minute")
        def work():
            return 1

        def test_a(throttlekit_reset):
            work()

        def test_b(throttlekit_reset):
            work()

        def test_c(throttlekit_disabled):
            assert sum(work() for _ in range(3)) == 3
    """)
    # (under -n, the inner run alone: pytest-benchmark would refuse an xdist worker's)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                          "-p", "no:xdist", "-p", "no:benchmark")
    result.assert_outcomes(passed=3)


@given(st.lists(st.integers(min_value=0, max_value=4), max_size=30))
def test_admits_exactly_the_limit_per_key(keys: list[int]) -> None:
    """Property: per key, exactly min(calls, limit) calls pass within one window."""
    limiter = Limiter(clock=FakeClock(), strategy="fixed_window")

    @limiter.limit("3/minute", key=lambda k: k)
    def work(k: int) -> int:
        return k

    passed: dict[int, int] = {}
    for k in keys:
        try:
            work(k)
            passed[k] = passed.get(k, 0) + 1
        except RateLimitExceeded:
            pass
    for k in set(keys):
        assert passed.get(k, 0) == min(keys.count(k), 3)


def test_worker_count_reads_servers_command_lines() -> None:
    """gunicorn/uvicorn worker counts come from argv or the environment."""
    assert worker_count({}, ["gunicorn", "-w", "4", "app:app"]) == 4
    assert worker_count({}, ["gunicorn", "--workers=3", "app:app"]) == 3
    assert worker_count({}, ["/x/uvicorn", "app:app", "--workers", "2"]) == 2
    assert worker_count({"WEB_CONCURRENCY": "5"}, ["python"]) == 5
    assert worker_count({"GUNICORN_CMD_ARGS": "--bind :80 -w 6"}, ["gunicorn"]) == 6
    assert worker_count({}, ["pytest", "-w", "9"]) == 1  # not a server's argv


def test_memory_store_under_several_workers_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory store under several workers warns once per process; Redis-like stores
    and single workers never."""
    import throttlekit._workers as workers

    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with pytest.warns(RuntimeWarning, match="multiplied by the number of workers"):
        assert warn_memory_multiworker(Limiter())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_memory_multiworker(Limiter())  # once
    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert not warn_memory_multiworker(Limiter())


def test_decorating_is_independent_of_functools_wraps_chain(limiter: Limiter) -> None:
    """A limit under another decorator is still enforced by its own wrapper."""

    def logged(fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def inner(*a, **k):  # type: ignore[no-untyped-def]
            return fn(*a, **k)
        return inner

    @limiter.limit("2/minute")
    @logged
    @limiter.limit("1/minute", scope="inner")
    def work() -> int:
        return 1

    work()
    with pytest.raises(RateLimitExceeded) as info:
        work()
    assert info.value.decision.limit == 1


def test_key_gets_the_call_arguments_by_name(limiter: Limiter) -> None:
    """key=lambda user_id, **kw: ... limits send_sms(42, "hi") per user (bound by name)."""

    @limiter.limit("2/hour", key=lambda user_id, **kw: user_id)
    def send_sms(user_id: int, text: str) -> str:
        return text

    assert send_sms(42, "a") == "a" and send_sms(user_id=42, text="b") == "b"
    with pytest.raises(RateLimitExceeded):
        send_sms(42, "c")
    assert send_sms(7, "d") == "d"


def test_key_naming_some_parameters_gets_only_those(limiter: Limiter) -> None:
    """A key naming one parameter gets it, defaults applied, whatever way the call passed it."""

    @limiter.limit("1/minute", key=lambda region: region, cost=lambda size: size)
    def upload(user: str, size: int = 1, region: str = "eu") -> str:
        return user

    assert upload("ann") == "ann"
    with pytest.raises(RateLimitExceeded):
        upload("bob", region="eu")
    assert upload("ann", 1, "us") == "ann"


def test_key_that_cannot_take_the_arguments_is_a_config_error(limiter: Limiter) -> None:
    """A key whose parameters do not fit the call raises ConfigError, not a skipped limit."""

    @limiter.limit("100/hour", key=lambda a, b, c: a)
    def two(x: int, y: int) -> int:
        return x

    with pytest.raises(ConfigError, match="lambda"):
        two(1, 2)


def test_clear_limiter_resets_a_redis_limiter_under_its_prefix_only() -> None:
    """The reset fixture's clear_limiter forgets a Redis limiter's keys, and no one else's."""
    redis = pytest.importorskip("redis")
    import uuid

    from throttlekit.testing import clear_limiter

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.ping()
    except redis.RedisError:
        from servers import unavailable

        unavailable("no Redis on 127.0.0.1:6379")
    prefix = f"tk-test-{uuid.uuid4().hex}:"
    other = prefix[:-1] + "x:keep"
    client.set(other, "1", ex=60)
    # (a sliding log: on the real clock a fixed window resets when a minute boundary falls
    # between the two calls)
    limiter = Limiter(f"redis://127.0.0.1:6379/0?prefix={prefix}", strategy="sliding_log")
    try:

        @limiter.limit("1/minute")
        def work() -> int:
            return 1

        work()
        with pytest.raises(RateLimitExceeded):
            work()
        clear_limiter(limiter)
        assert work() == 1
        assert client.get(other) == b"1"
    finally:
        client.delete(other, *client.scan_iter(match=prefix + "*"))
        client.close()
        limiter.storage.close()  # type: ignore[attr-defined]
