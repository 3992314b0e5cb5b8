"""Attacker-sized keys (hardening item 3): form and header values become storage keys, and a
key over 200 characters is stored as its SHA-256 on every backend, so what a client sends
bounds neither the bytes per key nor, with ``max_keys``, the store's memory. Admin paths
(``reset``, ``reset_rules``, ``unblock``, ``throttlekit inspect``/``reset``) hash the same
way and find the state."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from backends import redis as redis_backend
from throttlekit import Limiter, MemoryStorage, WSGIMiddleware
from throttlekit.cli import main as cli_main
from throttlekit.storage import RedisStorage
from throttlekit.testing import FakeClock

N = 2_000
BIG = 60_000  # a 60 KB user name: under max_form_bytes, so the form is read
HASHED = "#sha256:"


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def big_name(i: int) -> str:
    return f"{i:06d}" + "u" * (BIG - 6)


def post_big_names(limiter: Limiter, n: int) -> list[Any]:
    """``n`` logins, each with its own 60 KB user name; returns the verdicts."""
    verdicts: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        verdicts.append(environ["throttlekit.verdict"])
        return ok_app(environ, start_response)

    c = Client(WSGIMiddleware(app, limiter))
    for i in range(n):
        body = "username=" + big_name(i)
        r = c.post("/login", data=body, content_type="application/x-www-form-urlencoded")
        assert r.status_code == 200
    return verdicts


def test_memory_store_keys_stay_small(clock: FakeClock) -> None:
    """2,000 requests with 60 KB user names (120 MB sent) store a few hundred KB of keys
    (the memory store, through WSGIMiddleware, a throttle and a fail2ban on the form)."""
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("login", "5/minute", key="form:username")
    # maxretry=1: each name's first request goes through and bans it
    limiter.allow2ban("guess", match=lambda r: True, key="form:username", maxretry=1,
                      findtime=60, bantime=60)
    verdicts = post_big_names(limiter, N)
    assert all(v.key is None for v in verdicts)
    keys = list(storage._data)  # the stored counters' keys
    bans = [b.key for b in limiter.blocked()]
    assert len(keys) >= 2 * N and len(bans) == N
    assert max(map(len, keys)) < 200 and max(map(len, bans)) < 200
    assert sum(map(len, keys)) + sum(map(len, bans)) < 2 * N * 200  # vs 240 MB as sent
    assert all(HASHED in k for k in keys) and all(HASHED in b for b in bans)


def test_long_keys_are_found_by_every_admin_path(clock: FakeClock, tmp_path: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """hit/test/reset, reset_rules, unblock and the CLI's inspect/reset take the long key
    as the client sent it and find its hashed state."""
    limiter = Limiter(clock=clock)
    long_key = "k" * 5_000
    assert limiter.hit(long_key, "2/minute").remaining == 1
    assert limiter.test(long_key, "2/minute").remaining == 0  # one more would pass
    limiter.hit(long_key, "2/minute")
    assert not limiter.test(long_key, "2/minute").allowed
    limiter.reset(long_key)
    assert limiter.test(long_key, "2/minute").remaining == 1
    # a key of exactly the bound is stored as it is, one more character is hashed
    assert limiter.hit("x" * 200, "1/minute").allowed and not limiter.hit("x" * 200,
                                                                         "1/minute").allowed
    assert limiter.hit("x" * 201, "1/minute").allowed

    limiter.throttle("login", "1/minute", key="header:x-user")
    limiter.fail2ban("probe", match=lambda r: r.path == "/probe", key="header:x-user",
                     maxretry=1, findtime=60, bantime=600)
    c = Client(WSGIMiddleware(ok_app, limiter))
    h = {"X-User": long_key}
    assert [c.get("/", headers=h).status_code for _ in range(2)] == [200, 429]
    limiter.reset_rules(long_key)
    assert c.get("/", headers=h).status_code == 200
    assert c.get("/probe", headers=h).status_code == 403  # matched: refused and banned
    assert c.get("/", headers=h).status_code == 403
    assert limiter.unblock(long_key) is True
    limiter.reset_rules(long_key)
    assert c.get("/", headers=h).status_code == 200


@pytest.fixture
def redis_ctx() -> Iterator[redis_backend.Context]:
    with redis_backend.session() as ctx:
        yield ctx


@pytest.mark.redis
@pytest.mark.slow  # the memory store's test above runs in the fast suite; long keys on Redis: below
def test_redis_keys_stay_small(redis_ctx: redis_backend.Context, clock: FakeClock) -> None:
    """The same on Redis: every key under this test's prefix is short, and all of them
    together use a bounded amount of server memory (MEMORY USAGE), not 120 MB."""
    import redis

    storage = redis_ctx.storage()
    assert isinstance(storage, RedisStorage)
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("login", "5/minute", key="form:username")
    limiter.throttle("api", "5/minute", key="header:x-api-key")
    c = Client(WSGIMiddleware(ok_app, limiter))
    for i in range(N):
        r = c.post("/login", data="username=" + big_name(i),
                   headers={"X-Api-Key": "a" * 8_000 + str(i)},
                   content_type="application/x-www-form-urlencoded")
        assert r.status_code == 200
    raw = redis.Redis.from_url(redis_ctx.url)
    try:
        keys = list(raw.scan_iter(match=f"{storage.prefix}*", count=1000))
        assert len(keys) >= 2 * N
        assert max(map(len, keys)) < 300
        used = sum(raw.memory_usage(k) or 0 for k in keys)
        assert used < 2 * N * 1_000  # bytes; the names alone as sent would be 136 MB
    finally:
        raw.close()
        storage.close()


@pytest.mark.redis
def test_cli_inspect_and_reset_find_a_long_key(redis_ctx: redis_backend.Context,
                                               tmp_path: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    storage = redis_ctx.storage()
    rules = tmp_path / "rules.toml"
    # (a sliding log: the CLI counts on the real clock, where a fixed window resets when a
    # minute boundary falls between the posts and the inspection)
    rules.write_text('[[throttle]]\nname = "login"\nrates = "2/minute"\n'
                     'key = "form:username"\nstrategy = "sliding_log"\n')
    limiter = Limiter(storage)
    limiter.load_rules(rules)
    name = "n" * 3_000
    c = Client(WSGIMiddleware(ok_app, limiter))
    body = "username=" + urllib.parse.quote(name)
    for _ in range(2):
        c.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    url = f"{redis_ctx.url}?prefix={storage.prefix}"
    base = ["--storage", url, "--rules", str(rules)]
    try:
        assert cli_main(["inspect", name, *base, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["rules"]
        row = next(r for r in rows if r["rule"] == "login")
        assert row["remaining"] == 0
        assert cli_main(["reset", name, *base]) == 0
        capsys.readouterr()
        assert cli_main(["inspect", name, *base, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["rules"]
        assert next(r for r in rows if r["rule"] == "login")["remaining"] == 2
    finally:
        storage.close()
