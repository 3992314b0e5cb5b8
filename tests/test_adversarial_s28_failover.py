"""Redis Cluster node failures and Sentinel failovers attacked with real processes.

A Cluster master is killed (SIGKILL) or paused (SIGSTOP) while threads and an event loop hit
keys over every node; a slot is migrated under load (MOVED/ASK); a Sentinel fails over while
requests and blocks run. What held is asserted plainly; what is broken and not fixed here is
a strict xfail whose reason says what is wrong. Every server is our own (never the shared
Redis), started per test because the tests kill, pause and reshard it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from servers import RedisCluster, RedisSentinel, redis_command, start_or_skip
from throttlekit import Limiter, StorageError, WSGIMiddleware, storage_from_url

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TIMEOUT = 0.25  # the URL clients' socket timeout (storage/redis/_client.DEFAULT_TIMEOUT)
#: the longest a request may take while a store fails: the socket timeout, the documented
#: 0.2 s, and room for a loaded test machine
BUDGET = TIMEOUT + 0.2 + 0.35


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with start_or_skip(RedisCluster()) as c:
        yield c


@pytest.fixture
def sentinel() -> Iterator[RedisSentinel]:
    with start_or_skip(RedisSentinel()) as s:
        yield s


def _owner(cluster: RedisCluster, key: str) -> int:
    """The index in ``cluster.nodes`` of the master owning the slot of limiter key ``key``
    (its state lives under the hash tag ``{key}``)."""
    slot = int(redis_command(cluster.port, "CLUSTER", "KEYSLOT", "{" + key + "}"))
    for node in cluster.nodes:
        if node.running:
            for start, end, master, *_ in redis_command(node.port, "CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return cluster.ports.index(int(master[1]))
    raise AssertionError(f"no node owns slot {slot}")


def _keys_by_node(cluster: RedisCluster, per_node: int = 4) -> list[list[str]]:
    found: list[list[str]] = [[] for _ in cluster.nodes]
    i = 0
    while min(len(k) for k in found) < per_node:
        key = f"u{i}"
        owner = found[_owner(cluster, key)]
        if len(owner) < per_node:
            owner.append(key)
        i += 1
    return found


class Load:
    """Threads (and optionally an event loop) calling ``hit(key)`` round-robin over ``keys``,
    recording (start, seconds, decision or exception) per call."""

    def __init__(self, limiter: Limiter, keys: list[str], rate: str, threads: int = 6,
                 loop: bool = True) -> None:
        self.limiter, self.keys, self.rate = limiter, keys, rate
        self.calls: list[tuple[float, float, str, Any]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        if loop:
            self._threads.append(threading.Thread(target=asyncio.run, args=(self._arun(),)))

    def _run(self, i: int) -> None:
        n = i
        while not self._stop.is_set():
            key = self.keys[n % len(self.keys)]
            n += 1
            t = time.monotonic()
            try:
                d: Any = self.limiter.hit(key, self.rate)
            except Exception as exc:
                d = exc
            self.calls.append((t, time.monotonic() - t, key, d))
            time.sleep(0.002)

    async def _arun(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = self.keys[n % len(self.keys)]
            n += 1
            t = time.monotonic()
            try:
                d: Any = await self.limiter.ahit(key, self.rate)
            except Exception as exc:
                d = exc
            self.calls.append((t, time.monotonic() - t, key, d))
            await asyncio.sleep(0.002)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def raised(self) -> list[Any]:
        return [d for *_, d in self.calls if isinstance(d, BaseException)]

    def slow(self, since: float) -> list[tuple[float, str]]:
        """The calls started at ``since`` or later that took longer than the budget (the
        first calls build the clients and load the scripts: not what is timed here)."""
        return sorted((round(s, 3), k) for t, s, k, _ in self.calls if s > BUDGET and t >= since)


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


def _errors(caplog: pytest.LogCaptureFixture) -> int:
    return len([r for r in caplog.records if r.levelno >= logging.ERROR
                and r.name == "throttlekit"])


# -- Cluster: a master dies or hangs --------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_dead_or_hung_cluster_master_costs_a_request_at_most_the_socket_timeout(
    cluster: RedisCluster, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One master of three killed (then restarted empty on its port) or paused: no hit or
    ahit raises, none takes longer than the socket timeout + 0.2 s, the failure is logged
    once (not per request), and once the node is back every hit is answered by Redis again.

    Found: redis-py's RedisCluster retries a failed command 10 times with an exponential
    backoff (and refreshes its topology in between) unless told otherwise, and the Cluster
    client built from a URL kept that default: hits took 3 to 9 s each (the standalone and
    Sentinel clients are built with no retry)."""
    keys = [k for ks in _keys_by_node(cluster, 3) for k in ks]
    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-kill:"), retry_interval=0.5)
    victim = cluster.nodes[1]
    with caplog.at_level(logging.ERROR, logger="throttlekit"), \
            Load(limiter, keys, "100000/hour") as load:
        time.sleep(0.5)
        fault_at = time.monotonic()
        victim.kill() if fault == "kill" else victim.pause()
        time.sleep(3.0)
        victim.start() if fault == "kill" else victim.resume()
        cluster.wait_ok()
        back = time.monotonic()
        time.sleep(2.0)
    assert load.raised() == []
    assert load.slow(fault_at) == []
    assert 1 <= _errors(caplog) <= 2  # once per error_log_interval (60 s), whatever the load
    late = [d for t, _, _, d in load.calls if t > back + 1.5]
    assert late and not any(d.degraded for d in late)


@pytest.mark.cluster
@pytest.mark.parametrize("policy", ["deny", "allow", "local"])
def test_each_policy_answers_for_the_dead_masters_keys(cluster: RedisCluster,
                                                       policy: str) -> None:
    """The keys of a killed master get the policy: deny refuses, allow admits, local counts
    the same limit in memory (4/hour: 4 admitted, then refused), each degraded, in time."""
    dead = _keys_by_node(cluster, 2)[2]
    limiter = Limiter(storage_from_url(cluster.url, prefix=f"adv28-{policy}:"),
                      on_storage_error=policy, retry_interval=0.3)
    cluster.nodes[2].kill()
    for key in dead:
        answers = []
        for _ in range(6):
            t = time.monotonic()
            d = limiter.hit(key, "4/hour")
            assert time.monotonic() - t < BUDGET
            assert d.degraded
            answers.append(d.allowed)
        expected = {"deny": [False] * 6, "allow": [True] * 6,
                    "local": [True] * 4 + [False] * 2}[policy]
        assert answers == expected


@pytest.mark.cluster
@pytest.mark.xfail(strict=True, reason=(
    "one breaker for the whole Cluster: a single dead master sends the keys of every node "
    "to the fail policy (deny: all traffic refused; local: healthy keys counted in memory "
    "and missing from Redis after recovery)"))
def test_keys_on_healthy_masters_stay_counted_in_redis_while_one_master_is_dead(
    cluster: RedisCluster,
) -> None:
    """While one master is dead, hits on keys whose node never failed are answered by Redis
    (not degraded), and afterwards Redis holds their exact counts."""
    by_node = _keys_by_node(cluster, 3)
    healthy, dead = by_node[0] + by_node[1], by_node[2]
    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-healthy:"),
                      on_storage_error="deny", retry_interval=0.2)
    cluster.nodes[2].kill()
    admitted = dict.fromkeys(healthy, 0)
    degraded = 0
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        for key in dead:
            limiter.hit(key, "1000/hour")
        for key in healthy:
            d = limiter.hit(key, "1000/hour")
            degraded += d.degraded
            admitted[key] += d.allowed and not d.degraded
    assert degraded == 0
    for key, n in admitted.items():
        assert limiter.test(key, "1000/hour").remaining == 1000 - n - 1


@pytest.mark.cluster
@pytest.mark.xfail(strict=True, reason=(
    "the denial cache's generation read (key {%g}, one slot) goes through the one breaker: "
    "when its master dies, each failed read (once per second) sends every request to the "
    "policy for retry_interval, though none of their keys is on the dead node"))
def test_the_generation_keys_master_dying_degrades_no_request_on_other_nodes(
    cluster: RedisCluster,
) -> None:
    """Requests whose keys all live on healthy masters (some refused, so the denial cache
    reads the generation) stay Redis' answers when the master holding ``{%g}`` dies."""
    g = _owner(cluster, "%g")
    keys = [k for i, ks in enumerate(_keys_by_node(cluster, 4)) if i != g for k in ks]
    refused = set(keys[::2])
    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-gen:"), retry_interval=0.5)
    for key in keys:
        limiter.hit(key, "1/hour" if key in refused else "1000000/hour")
    cluster.nodes[g].kill()
    admitted = degraded = 0
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        for key in keys:
            d = limiter.hit(key, "1/hour" if key in refused else "1000000/hour")
            if key not in refused:
                admitted += 1
                degraded += d.degraded
    assert admitted > 100
    assert degraded == 0


def _add_replica(cluster: RedisCluster, master: int) -> Any:
    """A new node, replica of ``cluster.nodes[master]``, linked and in sync (close it)."""
    from servers import HOST, _ClusterNode

    node = _ClusterNode(node_timeout_ms=2000, startup_timeout=30).start()
    try:
        node.command("CLUSTER", "MEET", HOST, cluster.port)
        _wait(lambda: "cluster_state:ok" in str(node.command("CLUSTER", "INFO")), "the meet")
        master_id = str(cluster.nodes[master].command("CLUSTER", "MYID"))

        def replicate() -> bool:
            try:
                node.command("CLUSTER", "REPLICATE", master_id)
            except Exception:  # the node does not know the master yet
                return False
            return True

        _wait(replicate, "CLUSTER REPLICATE")
        _wait(lambda: "master_link_status:up" in str(node.command("INFO", "replication")),
              "the replica's link")
    except BaseException:
        node.close()
        raise
    return node


@pytest.mark.cluster
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_the_storage_follows_a_cluster_replica_taking_over(cluster: RedisCluster,
                                                           fault: str) -> None:
    """A master with a replica killed or paused: the replica is promoted (cluster-node-timeout
    2 s) and within 2.5 s of that (under 1 s on an idle machine) the dead master's keys are
    Redis' answers again; meanwhile nothing raises and nothing is slow."""
    replica = _add_replica(cluster, 1)
    try:
        by_node = _keys_by_node(cluster, 3)
        limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-rep:"),
                          retry_interval=0.2)
        victim = cluster.nodes[1]
        with Load(limiter, [k for ks in by_node for k in ks], "1000000/hour") as load:
            time.sleep(0.5)
            fault_at = time.monotonic()
            victim.kill() if fault == "kill" else victim.pause()
            _wait(lambda: "role:master" in str(replica.command("INFO", "replication")),
                  "the promotion")
            promoted = time.monotonic()
            time.sleep(4.0)
        if fault == "pause":
            victim.resume()
        assert load.raised() == []
        assert load.slow(fault_at) == []
        moved = [(t, d) for t, _, k, d in load.calls if t > promoted and k in by_node[1]]
        last_degraded = max((t for t, d in moved if d.degraded), default=promoted)
        assert last_degraded - promoted < 2.5  # (a second or less on an idle machine)
        assert any(t > last_degraded for t, _ in moved)
    finally:
        replica.close()


@pytest.mark.cluster
def test_cluster_outages_leak_no_connections_or_threads(cluster: RedisCluster) -> None:
    """Three kill/restart cycles of a master under load: afterwards the threads are those of
    before, and each node holds no more connections than before plus the load's."""
    keys = [k for ks in _keys_by_node(cluster, 2) for k in ks]
    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-leak:"), retry_interval=0.2)
    for key in keys:
        limiter.hit(key, "100000/hour")
    threads = threading.active_count()
    victim = cluster.nodes[0]
    for _ in range(3):
        with Load(limiter, keys, "100000/hour", threads=4, loop=False):
            time.sleep(0.3)
            victim.kill()
            time.sleep(0.8)
            victim.start()
            cluster.wait_ok()
            time.sleep(0.8)
    assert threading.active_count() == threads
    for node in cluster.nodes:
        clients = str(node.command("CLIENT", "LIST")).count("cmd=evalsha")
        assert clients <= 8, (node.port, clients)


@pytest.mark.cluster
def test_wsgi_middleware_never_fails_a_request_while_a_master_is_down(
    cluster: RedisCluster,
) -> None:
    """Through the WSGI middleware, with one master killed: every response is 200 or 429,
    never a 5xx, and each within the budget."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-wsgi:"), retry_interval=0.2)
    limiter.limit("3/hour", key="ip")
    client = Client(WSGIMiddleware(app, limiter))
    cluster.nodes[1].kill()
    codes = []
    for i in range(60):
        t = time.monotonic()
        codes.append(client.get("/", environ_base={"REMOTE_ADDR": f"192.0.2.{i % 20}"})
                     .status_code)
        assert time.monotonic() - t < BUDGET
    assert set(codes) <= {200, 429}


@pytest.mark.cluster
def test_a_slot_migrated_under_load_counts_every_check_once(cluster: RedisCluster) -> None:
    """A slot moved from one master to another (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
    NODE) while threads hit a key in it: MOVED and ASK are followed, no check is counted twice
    or lost: Redis' count afterwards equals the hits Redis admitted."""
    key = _keys_by_node(cluster, 1)[0][0]
    src, dst = cluster.nodes[0], cluster.nodes[1]
    slot = int(src.command("CLUSTER", "KEYSLOT", "{" + key + "}"))
    ids = {n.port: str(n.command("CLUSTER", "MYID")) for n in cluster.nodes}
    limiter = Limiter(storage_from_url(cluster.url, prefix="adv28-move:"))
    with Load(limiter, [key], "1000000/hour", threads=4) as load:
        time.sleep(0.3)
        dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
        src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
        time.sleep(0.2)
        while names := src.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *names)
        time.sleep(0.2)
        for node in cluster.nodes:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
        time.sleep(0.5)
    assert load.raised() == []
    redis_admitted = sum(1 for *_, d in load.calls if d.allowed and not d.degraded)
    assert redis_admitted > 100
    assert limiter.test(key, "1000000/hour").remaining == 1000000 - redis_admitted - 1


# -- Sentinel -------------------------------------------------------------------------------


@pytest.mark.sentinel
@pytest.mark.parametrize("how", ["failover", "kill"])
def test_the_storage_follows_a_sentinel_failover(
    sentinel: RedisSentinel, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SENTINEL FAILOVER (the master demoted: READONLY) or the master killed, under threads
    and a loop: nothing raises, nothing takes longer than the budget, the storage follows the
    new master (hits after the switch are Redis' own, not degraded) within 1 s of the
    Sentinel naming it, and a planned failover loses no count."""
    limiter = Limiter(storage_from_url(sentinel.url, prefix="adv28-sent:"), retry_interval=0.2)
    keys = ["a", "b", "c"]
    old = sentinel.current_master()
    with caplog.at_level(logging.ERROR, logger="throttlekit"), \
            Load(limiter, keys, "10000000/hour", threads=4) as load:
        time.sleep(0.5)
        fault_at = time.monotonic()
        if how == "failover":
            redis_command(sentinel.sentinel_port, "SENTINEL", "FAILOVER", sentinel.master_name)
        else:
            sentinel.master.kill()
        _wait(lambda: sentinel.current_master() not in (old, None), "the failover")
        named = time.monotonic()
        time.sleep(2.0)
    assert load.raised() == []
    assert load.slow(fault_at) == []
    after = [d for t, _, _, d in load.calls if t > named + 1.0]
    assert after and not any(d.degraded for d in after)
    if how == "failover":
        for key in keys:
            n = sum(1 for _, _, k, d in load.calls if k == key and not d.degraded)
            assert limiter.test(key, "10000000/hour").remaining == 10000000 - n - 1


@pytest.mark.sentinel
def test_a_demoted_master_answering_readonly_is_a_failure_not_a_crash(
    sentinel: RedisSentinel,
) -> None:
    """The master made a replica behind the Sentinel's back (REPLICAOF): its READONLY
    answers are a store failure (the policy answers, degraded), never an exception."""
    limiter = Limiter(storage_from_url(sentinel.url, prefix="adv28-ro:"),
                      on_storage_error="deny", retry_interval=0.1)
    assert not limiter.hit("k", "10/hour").degraded
    sentinel.master.command("REPLICAOF", "127.0.0.1", sentinel.replica.port)
    sentinel.replica.command("REPLICAOF", "NO", "ONE")
    answers = []
    for _ in range(10):
        t = time.monotonic()
        answers.append(limiter.hit("k", "10/hour"))
        assert time.monotonic() - t < BUDGET
        time.sleep(0.05)
    # Either redis-py reconnects to whatever the Sentinel names (the old master: READONLY)
    # and the policy answers, or the write landed on a master: never an allowed,
    # non-degraded answer that nothing counted.
    assert all(d.degraded and not d.allowed for d in answers) or all(
        not d.degraded for d in answers)


@pytest.mark.sentinel
def test_blocks_written_during_a_sentinel_failover_hold_or_fail_loudly(
    sentinel: RedisSentinel,
) -> None:
    """Limiter.block during a failover (the master killed): each call either succeeds, and
    the block is there on the new master, or raises StorageError (an operator must know);
    never a raw redis exception, never longer than the budget."""
    limiter = Limiter(storage_from_url(sentinel.url, prefix="adv28-block:"), retry_interval=0.1)
    old = sentinel.current_master()
    sentinel.master.kill()
    done, failed = [], []
    end = time.monotonic() + 15
    i = 0
    while time.monotonic() < end and sentinel.current_master() in (old, None):
        ip = f"198.51.100.{i % 250}"
        i += 1
        t = time.monotonic()
        try:
            limiter.block(ip, 3600)
            done.append(ip)
        except StorageError:
            failed.append(ip)
        assert time.monotonic() - t < BUDGET
        time.sleep(0.05)
    assert failed

    def blocks() -> bool:
        try:
            limiter.block("198.51.100.254", 3600)
        except StorageError:
            return False
        return True

    _wait(blocks, "a block after the switch", 5.0)  # redis-py asks the Sentinel again
    blocked = {b.key for b in limiter.blocked()}
    assert set(done) | {"198.51.100.254"} <= blocked


@pytest.mark.cluster
def test_a_cluster_url_client_does_not_retry_unless_asked(cluster: RedisCluster) -> None:
    """The Cluster clients built from a URL, sync and async, retry no failed command (as the
    standalone and Sentinel ones); a ``retry`` passed as an option is kept."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    store: Any = storage_from_url(cluster.url)
    client, aclient = store._make_client(), store._make_async()
    try:
        assert client.retry.get_retries() == 0
        assert aclient.retry.get_retries() == 0
    finally:
        client.close()
        asyncio.run(aclient.aclose())
    mine = Retry(ExponentialBackoff(), 2)
    own: Any = storage_from_url(cluster.url, retry=mine)
    client = own._make_client()
    try:
        assert client.retry.get_retries() == 2
    finally:
        client.close()
