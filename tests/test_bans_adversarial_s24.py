"""A ban storm on Redis through the WSGI middleware, and bans and blocks on a store that
dies: every ban answers 403 at the same cost however many came before, a dead store gets
the fail policy (logged, never an exception to the app), and an admin block on a dead
store is an error the operator sees."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, StorageError, WSGIMiddleware, storage_from_url
from throttlekit.cli import main as cli
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def _limiter(url: str, policy: str = "local", clock: FakeClock | None = None) -> Limiter:
    limiter = Limiter(storage_from_url(url, prefix="storm:"), on_storage_error=policy,
                      clock=clock)
    limiter.throttle("per-ip", "2/hour", strategy="fixed_window")
    limiter.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=1,
                     findtime=60, bantime=3600)
    return limiter


def _ip(n: int) -> dict[str, str]:
    return {"REMOTE_ADDR": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}


def _commands(server: RedisServer) -> int:
    info = server.command("INFO", "stats")
    text = info.decode() if isinstance(info, bytes) else str(info)
    [line] = [x for x in text.splitlines() if x.startswith("total_commands_processed:")]
    return int(line.split(":")[1])


def test_a_ban_storm_costs_the_same_per_ban_from_first_to_last(server: RedisServer) -> None:
    limiter = _limiter(server.url)
    client = Client(WSGIMiddleware(app, limiter))
    # (once per process: the generation of admin changes read, and made since none was)
    assert client.get("/", environ_base=_ip(10_000)).status_code == 200
    per_batch: list[int] = []
    for batch in range(4):
        before = _commands(server)
        for n in range(batch * 100, batch * 100 + 100):
            assert client.get("/wp-login.php", environ_base=_ip(n)).status_code == 403
        per_batch.append(_commands(server) - before - 1)  # (INFO itself)
    assert len(limiter.blocked()) == 400
    # each ban: the rule's round trip, the ban, the generation: no growth with the list
    assert max(per_batch) <= min(per_batch) + 5, per_batch
    # every banned client stays refused as banned, its own refusal not a cached throttle's
    assert {client.get("/", environ_base=_ip(n)).status_code for n in range(0, 400, 37)} == {
        403}
    limiter.storage.close()


@pytest.mark.parametrize(("policy", "statuses"), [
    ("allow", (403, 200)), ("deny", (429, 429)), ("local", (403, 403))])
def test_a_store_killed_in_a_ban_storm_gets_the_fail_policy_logged(
        server: RedisServer, caplog: pytest.LogCaptureFixture, policy: str,
        statuses: tuple[int, int]
) -> None:
    """Scanners keep coming after Redis died: no exception reaches the server, the
    scanner's requests get the policy's answer ("allow": the matched request refused,
    not banned; "deny": every request 429; "local": banned in the fallback store), and the
    failure is logged once per interval, not per request."""
    limiter = _limiter(server.url, policy)
    client = Client(WSGIMiddleware(app, limiter))
    for n in range(20):
        assert client.get("/wp-admin", environ_base=_ip(n)).status_code == 403
    server.kill()
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        seen = {(client.get("/wp-admin", environ_base=_ip(n)).status_code,
                 client.get("/", environ_base=_ip(n)).status_code) for n in range(100, 150)}
    assert seen == {statuses}
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert 1 <= len(failures) <= 2
    limiter.storage.close()


def test_block_on_a_dead_store_raises_for_the_operator(server: RedisServer) -> None:
    limiter = _limiter(server.url)
    limiter.block("192.0.2.1", 60)
    server.kill()
    with pytest.raises(StorageError):
        limiter.block("192.0.2.2", 60)
    limiter.storage.close()


def test_cli_block_on_a_dead_store_exits_1_with_the_reason(
        server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = server.url
    server.kill()
    assert cli(["block", "192.0.2.7", "--storage", url]) == 1
    out = capsys.readouterr()
    assert "failed" in out.err and "Traceback" not in out.err
    assert out.out == ""


def test_a_ban_keeps_the_other_clients_cached_refusals(server: RedisServer) -> None:
    """A ban storm does not empty the worker's cache: a ban is cached at once and looked up
    before the cached refusals, which stay (other workers drop theirs with the
    generation, at most once a second)."""
    limiter = _limiter(server.url, clock=FakeClock())  # (exact counts: a clock of its own)
    client = Client(WSGIMiddleware(app, limiter))
    for n in range(50):  # 50 throttled clients, their refusals cached
        assert [client.get("/", environ_base=_ip(n)).status_code for _ in range(3)] == [
            200, 200, 429]
    denials = limiter.store.denials
    assert denials is not None and len(denials) == 50
    assert client.get("/wp-x", environ_base=_ip(1000)).status_code == 403  # another client
    assert len(denials) == 50
    limiter.storage.close()


def test_async_bans_on_a_store_killed_mid_storm(server: RedisServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The same through ASGIMiddleware (aban, the async generation bump), then an ablock
    on the dead store: the requests get the "local" policy, the operator the error."""
    import asyncio

    from asgi_client import asgi_request
    from throttlekit import ASGIMiddleware

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limiter = _limiter(server.url)
    wrapped = ASGIMiddleware(ok, limiter)

    async def storm() -> set[tuple[int, int]]:
        for n in range(20):
            assert (await asgi_request(wrapped, "/wp-admin", f"10.0.0.{n}", []))[0] == 403
        server.kill()
        seen = set()
        for n in range(50):
            ip = f"10.0.1.{n}"
            seen.add(((await asgi_request(wrapped, "/wp-admin", ip, []))[0],
                      (await asgi_request(wrapped, "/", ip, []))[0]))
        with pytest.raises(StorageError):
            await limiter.ablock("192.0.2.3", 60)
        return seen

    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        assert asyncio.run(storm()) == {(403, 403)}
    assert 1 <= len([r for r in caplog.records if "failed" in r.getMessage()]) <= 2
    limiter.storage.close()
