"""The real-server helpers of tests/servers.py start, answer, restart and clean up."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

try:
    import servers
except ImportError:  # tests/ is a package, or pytest runs with --import-mode=importlib
    from tests import servers  # type: ignore[no-redef]


def _gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still "exists"; ours are always reaped, so anything left is alive.
    return False


def _refused(port: int) -> bool:
    try:
        with socket.create_connection((servers.HOST, port), timeout=0.5):
            return False
    except OSError:
        return True


# --------------------------------------------------------------------------- no server needed


def test_free_ports_avoid_shared_services_and_each_other() -> None:
    ports = [servers.free_port() for _ in range(20)]
    bus_ports = [servers.free_port(cluster_bus=True) for _ in range(5)]
    try:
        taken = set(ports) | set(bus_ports) | {p + 10000 for p in bus_ports}
        assert len(taken) == len(ports) + 2 * len(bus_ports)
        assert not taken & {6379, 11211, 26379}
        assert all(20000 <= p < 32000 for p in ports)
        assert all(12000 <= p < 20000 for p in bus_ports)
    finally:
        for p in ports:
            servers._release_port(p, False)
        for p in bus_ports:
            servers._release_port(p, True)


def test_concurrent_suites_take_disjoint_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """THROTTLEKIT_TEST_PORT_SLICE=k/n (.ci/run, one suite per Python at once): run k hands
    out only ports of residue k-1 mod n, cluster bus ports (port + 10000) included."""
    taken: dict[str, set[int]] = {}
    for spec in ("1/2", "2/2"):
        monkeypatch.setenv(servers.PORT_SLICE_ENV, spec)
        ports = [servers.free_port() for _ in range(30)]
        bus = [servers.free_port(cluster_bus=True) for _ in range(10)]
        for p in ports:
            servers._release_port(p, False)
        for p in bus:
            servers._release_port(p, True)
        taken[spec] = set(ports) | set(bus) | {p + 10000 for p in bus}
    assert {p % 2 for p in taken["1/2"]} == {0} and {p % 2 for p in taken["2/2"]} == {1}
    for bad in ("0/2", "3/2", "1/3", "half"):
        monkeypatch.setenv(servers.PORT_SLICE_ENV, bad)
        with pytest.raises(ValueError, match=servers.PORT_SLICE_ENV):
            servers.free_port()


def test_missing_binary_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(servers.ServerUnavailable, match="redis-tools"):
        servers.find_binary("redis-cli")
    server = servers.MemcachedServer()
    with pytest.raises(servers.ServerUnavailable, match=r"'memcached'.*apt-get install memcached"):
        server.start()
    server.close()
    assert not server.dir.exists()


def test_unavailable_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no redis"):
        servers.unavailable("no redis")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no redis"):
        servers.unavailable("no redis")
    with pytest.raises(pytest.fail.Exception, match="gone"):
        servers.require_or_skip(servers.ServerUnavailable("gone"))


# --------------------------------------------------------------------------- Redis


@pytest.mark.redis
def test_redis_server_answers_restarts_on_same_port_and_cleans_up() -> None:
    redis = pytest.importorskip("redis")
    server = servers.start_or_skip(servers.RedisServer())
    with server:
        port, first_pid = server.port, server.pid
        assert port != 6379
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"

            server.stop()
            assert _gone(first_pid)
            assert _refused(port)
            server.start()  # same port, empty (no persistence)
            assert server.port == port
            assert server.pid != first_pid
            assert client.get("k") is None  # the client reconnects by itself

            server.kill()
            assert _refused(port)
            server.start()
            assert server.command("PING") == "PONG"

            server.pause()  # port open, nobody answers
            with pytest.raises(OSError):
                servers.redis_command(port, "PING", timeout=0.3)
            server.resume()
            assert server.command("PING") == "PONG"
        finally:
            client.close()
        last_pid, tmp = server.pid, server.dir
    assert _gone(last_pid)
    assert not tmp.exists()
    assert servers.redis_command(6379, "PING") == "PONG"  # the shared Redis is untouched


@pytest.mark.cluster
def test_redis_cluster_is_ok_and_serves_keys_in_every_slot_range() -> None:
    cluster_mod = pytest.importorskip("redis.cluster")
    with servers.start_or_skip(servers.RedisCluster()) as cluster:
        assert len(set(cluster.ports)) == 3
        assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
        for port in cluster.ports:
            info = servers.redis_command(port, "CLUSTER", "INFO")
            assert "cluster_state:ok" in info
            assert "cluster_known_nodes:3" in info
        client = cluster_mod.RedisCluster(host="127.0.0.1", port=cluster.port)
        try:
            keys = [f"key-{i}" for i in range(30)]  # spread over all three masters
            for key in keys:
                client.set(key, key.upper())
            assert [client.get(k) for k in keys] == [k.upper().encode() for k in keys]
            owners = {client.get_node_from_key(k).port for k in keys}
            assert owners == set(cluster.ports)
        finally:
            client.close()
        pids = [node.pid for node in cluster.nodes]
    assert all(_gone(pid) for pid in pids)


@pytest.mark.sentinel
def test_redis_sentinel_reports_master_and_clients_find_it() -> None:
    sentinel_mod = pytest.importorskip("redis.sentinel")
    with servers.start_or_skip(servers.RedisSentinel()) as setup:
        assert setup.url == f"redis+sentinel://127.0.0.1:{setup.sentinel_port}/mymaster"
        assert setup.current_master() == ("127.0.0.1", setup.master_port)
        sentinel = sentinel_mod.Sentinel([("127.0.0.1", setup.sentinel_port)], socket_timeout=2)
        master = sentinel.master_for("mymaster", socket_timeout=2)
        try:
            assert sentinel.discover_master("mymaster") == ("127.0.0.1", setup.master_port)
            master.set("k", "v")
            assert master.get("k") == b"v"
        finally:
            master.close()
            for conn in sentinel.sentinels:
                conn.close()
        pids = [setup.master.pid, setup.replica.pid, setup.sentinel.pid]
    assert all(_gone(pid) for pid in pids)


# --------------------------------------------------------------------------- memcached


@pytest.mark.memcached
def test_memcached_answers_and_stops() -> None:
    pymemcache = pytest.importorskip("pymemcache.client.base")
    with servers.start_or_skip(servers.MemcachedServer()) as server:
        assert server.port != 11211
        assert server.url == f"memcached://127.0.0.1:{server.port}"
        assert servers.memcached_version(server.port)
        client = pymemcache.Client(("127.0.0.1", server.port), connect_timeout=2, timeout=2)
        try:
            client.set("k", b"v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        pid, port = server.pid, server.port
        server.stop()
        assert _gone(pid)
        assert _refused(port)
