"""Issue 16's features attacked through the public API, as an attacker or a tired operator
would: odd configuration values, hostile inputs, concurrency. Each test is a defect found
(then fixed) or an attack that held and must keep holding."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter, RequestView, storage_from_url
from throttlekit.blocklists import Blocklist, parse_list
from throttlekit.testing import FakeClock


def request(lim: Limiter, ip: str, path: str = "/wp-admin",
            headers: dict[str, str] | None = None) -> Any:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return lim.evaluate(RequestView.from_environ(environ, lim.resolver))


def ban_left(lim: Limiter, clock: Any, ip: str) -> float:
    for b in lim.blocked():
        if b.key.endswith(":" + ip):
            return round(b.expires_at - clock(), 3)
    return 0.0


def offend(lim: Limiter, clock: FakeClock, ip: str) -> float:
    """Trip the rule (two matches), return the ban's length, wait it out."""
    request(lim, ip)
    assert request(lim, ip).kind == "banned"
    left = ban_left(lim, clock, ip)
    clock.advance(left + 1)
    return left


# -- escalation ---------------------------------------------------------------------------


def test_a_gentle_factor_still_reaches_max_ban() -> None:
    """factor=1.01 (a gentle climb), max_ban 64 x bantime: a key that keeps offending ends
    at max_ban, as documented ("stays at max_ban"). Defect: the levels were capped at 64,
    so such a ban never grew past bantime x 1.01**63 (1.87 x bantime)."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    lim.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                 findtime=60, bantime=1, escalate={"factor": 1.01, "max_ban": 64,
                                                   "forget_after": 1000})
    lengths = [offend(lim, clock, "192.0.2.1") for _ in range(450)]
    assert lengths[0] == 1
    assert lengths[100] == pytest.approx(1.01 ** 100, abs=1e-3)
    assert lengths[-1] == 64



@pytest.mark.parametrize(("bantime", "jitter"), [(1e-7, 0.0), (1e-6, 0.9), (10.0, 0.99999999)])
def test_a_jittered_or_tiny_escalated_ban_never_fails_the_request(bantime: float,
                                                                  jitter: float) -> None:
    """A ban whose jittered length rounds down to 0 microseconds (a sub-microsecond
    ``bantime``, or ``jitter`` just under 1 drawing near 1): the request is still decided,
    banned. Defect: the store was asked for a ban of 0 seconds, which it refuses with a
    ConfigError, raised while the request was handled."""
    import random

    random.seed(3)  # jitter draws: some near 1
    clock = FakeClock()
    lim = Limiter(clock=clock)
    lim.fail2ban("s", match=lambda v: True, maxretry=1, findtime=60, bantime=bantime,
                 escalate={"jitter": jitter})
    for i in range(200):
        assert request(lim, f"192.0.2.{i % 250 + 1}").kind == "banned"
        clock.advance(0.001)

# -- plans --------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [["pro", "admin"], {"plan": "pro"}, {"pro"}])
def test_a_plan_function_answering_garbage_gets_the_default_plan(garbage: Any) -> None:
    """A plan function that returns an unhashable value (a list of roles from a token, a
    dict) names no plan: the request gets ``default``'s rates, as an unknown name does.
    Defect: the table lookup raised TypeError, the rule failed and ``on_storage_error``
    skipped it, so such a caller was not limited at all."""
    lim = Limiter(clock=FakeClock())
    plans = lim.plans({"free": "2/minute", "pro": "100/minute"}, plan=lambda v: garbage,
                      default="free")
    lim.throttle("api", rates=plans)
    assert [request(lim, "192.0.2.1", "/").kind for _ in range(3)] == [
        "allowed", "allowed", "throttled"]


def test_a_plan_function_that_raises_applies_the_failure_policy() -> None:
    """A plan function that raises fails the rule: under ``on_storage_error="deny"`` the
    request is refused (held: it never crashes the request)."""
    lim = Limiter(clock=FakeClock(), on_storage_error="deny")
    plans = lim.plans({"free": "2/minute"}, plan=lambda v: 1 / 0, default="free")
    lim.throttle("api", rates=plans)
    assert not request(lim, "192.0.2.1", "/").allowed


# -- blocklists ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\ufeff192.0.2.7\n198.51.100.0/24\n",
                                  '\ufeff[{"value": "192.0.2.7", "scope": "Ip", '
                                  '"type": "ban"}]'])
def test_a_list_saved_with_a_byte_order_mark_loads_whole(tmp_path: Path, text: str) -> None:
    """A list saved by an editor that writes a UTF-8 byte order mark (Notepad): every
    entry counts. Defect: the mark stuck to the first address, which was skipped as "not
    an address" (a one-line list, or a JSON one, was refused whole)."""
    path = tmp_path / "list.txt"
    path.write_bytes(text.encode("utf-8"))
    blocklist = Blocklist.from_file(path)
    try:
        assert "192.0.2.7" in blocklist
    finally:
        blocklist.close()


def test_a_bom_is_read_the_same_way_by_parse_list() -> None:
    assert parse_list("\ufeff192.0.2.7") == parse_list("192.0.2.7")


def test_redis_killed_mid_chain_never_breaks_a_request_and_bans_stay() -> None:
    """Escalating bans on a Redis that dies between two bans: the requests are decided
    (no exception), the offender is still banned while the store is down (the local
    fallback's chain), and once Redis is back the rule runs on it again."""
    import servers

    with servers.start_or_skip(servers.RedisServer()) as server:
        clock = FakeClock()
        lim = Limiter(server.url, clock=clock, on_storage_error="local", retry_interval=0.1)
        lim.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                     findtime=60, bantime=10, escalate={"max_ban": 1000,
                                                        "forget_after": 1000})
        try:
            assert offend(lim, clock, "192.0.2.1") == 10
            assert offend(lim, clock, "192.0.2.1") == 20
            server.stop()
            request(lim, "192.0.2.1")
            assert request(lim, "192.0.2.1").kind == "banned"
            assert request(lim, "192.0.2.1", "/").kind == "banned"
            clock.advance(1001)
            server.start()
            time.sleep(0.3)  # past retry_interval (real time): the store is tried again
            assert offend(lim, clock, "192.0.2.9") == 10  # read back from Redis
            assert offend(lim, clock, "192.0.2.9") == 20
        finally:
            lim.storage.close()


@pytest.mark.redis
def test_a_plan_change_under_concurrency_keeps_the_count_exactly(redis_prefix: str) -> None:
    """8 threads on one Redis key: 80 requests on the free plan (100/minute), then the
    caller moves to pro (1000/minute) and 8 x 30 more run, then back to free: every
    request up to the pro limit is allowed, none after the move back, and the headers'
    remaining is the pro limit less exactly the 320 counted across both plans."""
    clock = FakeClock(1_800_000_000.0)
    lim = Limiter(storage_from_url("redis://127.0.0.1:6379/0", prefix=redis_prefix),
                  clock=clock, strategy="fixed_window")
    plan = ["free"]
    lim.throttle("api", rates=lim.plans({"free": "100/minute", "pro": "1000/minute"},
                                        plan=lambda v: plan[0], default="free"))

    def burst(n: int) -> list[Any]:
        out: list[Any] = []

        def run() -> None:
            out.extend(request(lim, "192.0.2.1", "/") for _ in range(n))
        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    try:
        assert all(v.allowed for v in burst(10))
        plan[0] = "pro"
        assert all(v.allowed for v in burst(30))
        last = request(lim, "192.0.2.1", "/")
        assert last.allowed and last.decision.limit == 1000
        assert last.decision.remaining == 1000 - 321
        plan[0] = "free"
        refused = burst(5)
        assert not any(v.allowed for v in refused)
        assert {v.decision.limit for v in refused} == {100}
    finally:
        lim.storage.close()


@pytest.mark.parametrize(("headers", "named"), [
    ({"X:Key": "k"}, "X:Key"),
    ({"": "k"}, "''"),
    ({"X Key": "k"}, "X Key"),
    ({"X-Key": "ключ"}, "'X-Key': the value has a character outside Latin-1"),
], ids=["colon-in-name", "empty-name", "space-in-name", "not-latin-1"])
def test_a_header_urllib_cannot_send_is_a_config_error(headers: dict[str, str],
                                                       named: str) -> None:
    """Headers a URL list can never send are refused when the list is made, naming them.
    Defect: a header name with a colon or none at all, or a value outside Latin-1 (a
    pasted key in Cyrillic), passed the check, and every fetch then failed: the list
    stayed empty for good, with only a warning per refresh."""
    with pytest.raises(ConfigError, match=named):
        Blocklist("http://127.0.0.1:9/list", headers=headers)


@pytest.mark.parametrize("name", ["memcached", "redis"])
def test_eight_threads_banning_one_key_count_every_ban(
        name: str, _backend_contexts: dict[str, Any]) -> None:
    """8 threads (each its own client) escalate one key 15 times at the same instant: the
    120 levels are exactly 1..120, each once (memcached's CAS retries, Redis's script: no
    two bans read the same level), with a gentle factor so no level is capped."""
    from throttlekit._escalation import Escalation

    ctx = _backend_contexts["get"](name)  # skips when the server does not answer
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    if name == "redis":
        ctx.prefixes.append(prefix)
    url = ctx.url if name == "memcached" else "redis://127.0.0.1:6379/0"
    key = f"rule:{uuid.uuid4().hex}"
    levels: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        store = storage_from_url(url, prefix=prefix)
        try:
            esc = Escalation.of({"factor": 1.001, "max_ban": 1000}, 1.0, "o:t", "t", store)
            assert esc is not None
            got = [store.escalate(esc, key, 0.0, 1_800_000_000_000_000)[0]
                   for _ in range(15)]
        finally:
            store.close()
        with lock:
            levels.extend(got)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(levels) == list(range(1, 121))


def test_a_header_key_skips_requests_without_it_and_the_documented_fallback_counts_them(
) -> None:
    """key="header:X-Api-Key": a request without the header is not counted by the rule
    (held, documented); the key function docs/rules.md gives counts it per address."""
    lim = Limiter(clock=FakeClock())
    lim.throttle("api", "2/minute", key="header:X-Api-Key")
    assert all(request(lim, "192.0.2.1", "/").allowed for _ in range(5))
    lim = Limiter(clock=FakeClock())
    lim.throttle("api", "2/minute",
                 key=lambda v: v.headers.get("x-api-key") or "ip:" + (v.client_ip or ""))
    assert [request(lim, "192.0.2.1", "/").allowed for _ in range(3)] == [True, True, False]
    assert request(lim, "192.0.2.1", "/", {"X-Api-Key": "k"}).allowed


def test_redis_paused_mid_chain_answers_within_the_timeout() -> None:
    """A Redis that stops answering (SIGSTOP) between two bans: the request that makes the
    next ban is decided within about the socket timeout, still banned (the local
    fallback), and the chain goes on in Redis once it answers again."""
    import servers

    with servers.start_or_skip(servers.RedisServer()) as server:
        clock = FakeClock()
        store = storage_from_url(server.url + "?socket_timeout=0.3")
        lim = Limiter(store, clock=clock, on_storage_error="local", retry_interval=0.1)
        lim.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                     findtime=60, bantime=10, escalate={"max_ban": 1000,
                                                        "forget_after": 1000})
        try:
            assert offend(lim, clock, "192.0.2.1") == 10
            server.pause()
            try:
                started = time.monotonic()
                request(lim, "192.0.2.1")
                request(lim, "192.0.2.1")  # the second match: banned (by the fallback)
                assert request(lim, "192.0.2.1", "/").kind == "banned"
                assert time.monotonic() - started < 3.0
            finally:
                server.resume()
            time.sleep(0.3)  # past retry_interval: Redis is asked again
            clock.advance(30)
            assert offend(lim, clock, "192.0.2.1") == 20  # the chain kept in Redis
        finally:
            store.close()


def test_a_bad_header_value_is_reported_without_the_value() -> None:
    """A header value read from the environment is usually a secret (a bouncer key): the
    ConfigError names the header and what is wrong, never the value (which would land in
    logs and ``throttlekit check``'s output)."""
    with pytest.raises(ConfigError) as exc:
        Blocklist("http://127.0.0.1:9/list", headers={"X-Api-Key": "s3cr3t-key\n"})
    assert "X-Api-Key" in str(exc.value) and "s3cr3t" not in str(exc.value)


# -- calendar quotas ----------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "last_second"), [
    ("Europe/Paris", "2026-03-31T23:59:59"),      # the month the clocks went forward
    ("Europe/Paris", "2026-10-31T23:59:59"),      # the month they went back
    ("America/Sao_Paulo", "2018-10-31T23:59:59"),  # the next day started at 01:00 (gap)
    ("Pacific/Apia", "2011-12-29T23:59:59"),      # Dec 30 never happened there
])
def test_a_monthly_quota_turns_over_at_local_midnight(zone: str, last_second: str) -> None:
    """2/calendar-month in a zone with a clock change near the month's end: spent in the
    month's last second, fresh a second and a half later exactly when that is a new local
    month (held)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    when = dt.datetime.fromisoformat(last_second).replace(tzinfo=ZoneInfo(zone))
    clock = FakeClock(when.timestamp())
    lim = Limiter(clock=clock)
    rate = f"2/calendar-month in {zone}"
    assert [lim.hit("k", rate).allowed for _ in range(3)] == [True, True, False]
    clock.advance(1.5)
    later = dt.datetime.fromtimestamp(clock(), ZoneInfo(zone))
    new_month = (later.year, later.month) != (when.year, when.month)
    assert lim.hit("k", rate).allowed is new_month
    assert new_month is (zone != "Pacific/Apia")


# -- waiting ------------------------------------------------------------------------------


def test_thirty_concurrent_waited_asgi_requests_admit_at_most_the_limit() -> None:
    """30 requests at once through ASGIMiddleware(wait=1) on a 5/second global limit (real
    clock): at most 5 served per second of waiting (10 in all, the rest refused after one
    wait), and every request tells exactly one outcome, allowed or throttled (held)."""
    import asyncio
    import collections

    import httpx

    from throttlekit.asgi import ASGIMiddleware

    lim = Limiter(strategy="fixed_window")
    lim.throttle("per", "5/second", key="global")
    events: list[Any] = []
    lim.on(events.append)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, lim, wait=1.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            answers = await asyncio.gather(*(c.get("/") for _ in range(30)))
        return [r.status_code for r in answers]

    codes = collections.Counter(asyncio.run(main()))
    kinds = collections.Counter(e.kind for e in events)
    assert codes[200] + codes[429] == 30
    assert kinds["allowed"] == codes[200] and kinds["throttled"] == codes[429]
    # each request waited at most once: served in its first window or the next one
    assert 5 <= codes[200] <= 15
    # never more than 5 in one window: each allowed decision's remaining is 4..0, and
    # each of those is told once per window (at most 3 windows: the first may straddle)
    left = collections.Counter(e.decision.remaining for e in events if e.kind == "allowed")
    assert set(left) <= set(range(5)) and max(left.values()) <= 3


@pytest.mark.parametrize("key", ["header:X Api Key", "header:X-Api-Key:", "header:Ключ"])
def test_a_header_key_no_request_could_send_is_refused_at_setup(key: str) -> None:
    """A header name with a space, a colon or a non-ASCII letter can never arrive: such a
    limit would silently never apply, so it is a ConfigError naming the key (decorators and
    throttles alike)."""
    lim = Limiter("memory://")
    with pytest.raises(ConfigError, match="is not an HTTP header name"):
        lim.throttle("api", "2/minute", key=key)
    with pytest.raises(ConfigError, match="is not an HTTP header name"):
        lim.limit("2/minute", key=key)


def test_a_valid_header_key_counts_per_header_value() -> None:
    lim = Limiter(clock=FakeClock())
    lim.throttle("api", "1/minute", key="header:X-Api-Key")
    assert request(lim, "192.0.2.1", "/", {"X-Api-Key": "a"}).allowed
    assert request(lim, "192.0.2.1", "/", {"X-Api-Key": "b"}).allowed
    assert not request(lim, "192.0.2.2", "/", {"X-Api-Key": "a"}).allowed
