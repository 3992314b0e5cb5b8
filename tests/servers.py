"""Real local servers for the tests: Redis (single, Cluster, Sentinel) and memcached.

Every server is a process of its own, on 127.0.0.1, on a spare port (never 6379, 11211 or the
other ports of the machine's shared services), in its own temporary directory. ``stop()`` ends
the processes but keeps ports and directories, so ``start()`` brings them back on the same ports;
``close()`` (and leaving a ``with`` block) also removes the directories. Whatever is still
running when the interpreter exits is ended by an ``atexit`` hook, and on Linux the processes
are also asked to die with the process that started them (``PR_SET_PDEATHSIG``).

Typical use in a fixture::

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        with start_or_skip(RedisServer()) as server:
            yield server

A missing binary raises :class:`ServerUnavailable`; :func:`unavailable` turns that into a skip,
or into a failure when ``CI=true``, where every server must be there.

Stdlib only, and it must not import throttlekit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

__all__ = [
    "HOST",
    "MemcachedServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisSentinel",
    "RedisServer",
    "ServerStartError",
    "ServerUnavailable",
    "find_binary",
    "free_port",
    "memcached_version",
    "redis_command",
    "require_or_skip",
    "start_or_skip",
    "unavailable",
]

HOST = "127.0.0.1"

# Binary -> Debian package that provides it.
PACKAGES = {"redis-server": "redis-server", "redis-cli": "redis-tools", "memcached": "memcached"}

# The machine's shared services (Redis 6379, memcached 11211, PostgreSQL, MariaDB, RabbitMQ,
# Mosquitto, NATS) and their usual companions: never handed out, whatever the scan finds.
_AVOID = frozenset(
    {1883, 3306, 4222, 4369, 5432, 5672, 6222, 6379, 6380, 8222, 11211, 15672, 16379, 25672, 26379}
)
# Ranges below Linux's ephemeral range (32768-60999), so that a client socket's local port
# cannot take a stopped server's port before it restarts. Cluster nodes also need port + 10000
# for the cluster bus.
_PORT_RANGE = (20000, 32000)
_CLUSTER_PORT_RANGE = (12000, 20000)
_BUS_OFFSET = 10000
#: ``k/n``: this run hands out only the ports ``p`` with ``p % n == k - 1``, so that n suites
#: running at once on one machine (.ci/run runs one per Python) never pick the same port. A
#: cluster node's bus port (``p + 10000``) keeps the residue, so n must divide 10,000.
PORT_SLICE_ENV = "THROTTLEKIT_TEST_PORT_SLICE"


def _port_slice(spec: str | None) -> tuple[int, int]:
    """``(first offset, step)`` of this run's ports, from ``spec`` (``"k/n"``, or unset)."""
    if not spec:
        return 0, 1
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n or _BUS_OFFSET % n:
        raise ValueError(f"{PORT_SLICE_ENV}={spec!r}: expected k/n with 1 <= k <= n and n "
                         f"dividing {_BUS_OFFSET} (2, 4, 5, 8, 10...)")
    return k - 1, n


def _worker_slice(first: int, step: int) -> tuple[int, int]:
    """This run's slice split among pytest-xdist's workers (``-n``): worker ``gwK`` of N
    takes residue K of the smallest part count >= N that keeps the bus ports' residue."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        index = int(worker[2:]) if worker.startswith("gw") else -1
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    except ValueError:
        return first, step
    if index < 0 or count < 2:
        return first, step
    parts = next((n for n in range(count, _BUS_OFFSET // step + 1)
                  if (_BUS_OFFSET // step) % n == 0), 0)
    if not parts:
        return first, step
    return first + step * (index % parts), step * parts


class ServerUnavailable(RuntimeError):
    """A server binary is not installed; the message names the binary and the Debian package."""


class ServerStartError(RuntimeError):
    """The binary is there but the server did not come up (the message has its log's tail)."""


class _ExitedEarly(ServerStartError):
    """The process exited while starting (most often: its port was taken meanwhile)."""


class RedisReplyError(RuntimeError):
    """A Redis error reply (``-ERR ...``) to :func:`redis_command`."""


# --------------------------------------------------------------------------- skip or fail


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing server, or fail it when ``CI=true`` (CI must run them all)."""
    import pytest

    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(
            f"{reason} (CI=true: a missing test server is an error, not a skip)", pytrace=False
        )
    pytest.skip(reason)


def shared_redis_up(port: int = 6379) -> bool:
    """Whether the machine's shared Redis answers on 127.0.0.1 (only ever read from tests)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def needs_shared_redis() -> Any:
    """A mark for tests on the shared Redis: skipped when it is down, except under CI=true,
    where the test runs (and fails) so a missing server is never a silent skip."""
    import pytest

    in_ci = os.environ.get("CI", "").strip().lower() == "true"
    return pytest.mark.skipif(
        not in_ci and not shared_redis_up(), reason="no Redis on 127.0.0.1:6379"
    )


@contextlib.contextmanager
def http_app(
    argv: list[str], port: int, ready_path: str, *, env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None, settle: float = 0.0,
    log: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Run an HTTP server command (gunicorn, uvicorn, ...) listening on loopback ``port``;
    yield its base URL once ``ready_path`` answers, and stop it afterwards. With ``log``,
    the server's stderr goes to that file (for tests that read what it logged)."""
    import httpx

    log_file = open(log, "ab") if log is not None else None  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if log_file is None else log_file)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                if proc.stderr is not None:
                    err = proc.stderr.read().decode(errors="replace")[-2000:]
                else:
                    err = Path(log or "").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{argv} exited: {err}")
            try:
                httpx.get(base + ready_path, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not answer on {base}") from None
                time.sleep(0.1)
        time.sleep(settle)  # e.g. let every worker finish booting
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        if log_file is not None:
            log_file.close()


def require_or_skip(exc: BaseException) -> NoReturn:
    """``except ServerUnavailable as exc: require_or_skip(exc)``."""
    unavailable(str(exc))


def find_binary(name: str) -> str:
    """The path of ``name``, or :class:`ServerUnavailable` naming the package to install."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, name)
        raise ServerUnavailable(
            f"{name!r} is not installed (not on PATH); install the Debian package {package!r}: "
            f"apt-get install {package}"
        )
    return path


# --------------------------------------------------------------------------- ports

_lock = threading.RLock()
_reserved: set[int] = set()
_rng = random.SystemRandom()  # immune to random.seed() in tests


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """Reserve a spare loopback port (and ``port + 10000`` too, for a cluster node's bus).

    The port stays reserved in this process until the server owning it is closed, so a stopped
    server can start again on it. Other processes are only kept off by the bind check (and a
    random pick); servers retry with a new port when their first start finds it taken. Suites
    running at once take disjoint ports with ``THROTTLEKIT_TEST_PORT_SLICE`` (k/n).
    """
    lo, hi = _CLUSTER_PORT_RANGE if cluster_bus else _PORT_RANGE
    first, step = _worker_slice(*_port_slice(os.environ.get(PORT_SLICE_ENV)))
    with _lock:
        for _ in range(1000):
            port = _rng.randrange(lo + first, hi, step)
            wanted = (port, port + _BUS_OFFSET) if cluster_bus else (port,)
            if all(p not in _AVOID and p not in _reserved and _bindable(p) for p in wanted):
                _reserved.update(wanted)
                return port
    raise ServerStartError(f"no free loopback port found in {lo}-{hi}")


def _release_port(port: int, cluster_bus: bool) -> None:
    with _lock:
        _reserved.discard(port)
        if cluster_bus:
            _reserved.discard(port + _BUS_OFFSET)


# --------------------------------------------------------------------------- raw clients


def _read_reply(stream: Any) -> Any:
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP2 reply: {line[:50]!r}")


def redis_command(port: int, *args: str | int | bytes, timeout: float = 2.0) -> Any:
    """Send one command to the Redis (or Sentinel) server on ``127.0.0.1:port``; no client lib.

    Bulk strings come back as ``str``, arrays as lists; an error reply raises
    :class:`RedisReplyError`; connection problems raise ``OSError``.
    """
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _redis_info(port: int, section: str) -> dict[str, str]:
    text = redis_command(port, "INFO", section)
    return dict(
        line.split(":", 1) for line in str(text).splitlines() if ":" in line and line[0] != "#"
    )


def _pings(port: int) -> bool:
    try:
        return bool(redis_command(port, "PING", timeout=0.5) == "PONG")
    except (OSError, RedisReplyError, ValueError):
        return False


def memcached_version(port: int, timeout: float = 2.0) -> str:
    """The ``version`` reply of the memcached on ``127.0.0.1:port`` (``OSError`` if none)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"version\r\n")
        with sock.makefile("rb") as stream:
            line = stream.readline().decode(errors="replace").strip()
    if not line.startswith("VERSION "):
        raise ConnectionError(f"unexpected memcached reply: {line!r}")
    return line.removeprefix("VERSION ")


# --------------------------------------------------------------------------- lifecycle

_M = TypeVar("_M", bound="_Managed")
_P = TypeVar("_P", bound="_Process")
_C = TypeVar("_C", bound="RedisCluster")
_S = TypeVar("_S", bound="RedisSentinel")
_live: dict[int, _Managed] = {}  # id -> object, in creation order
_owner_pid = os.getpid()


def _close_all() -> None:
    if os.getpid() != _owner_pid:  # a forked child must not stop its parent's servers
        return
    for server in reversed(list(_live.values())):
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_close_all)


class _Managed:
    """start / stop / close, a ``with`` block, and the ``atexit`` safety net."""

    def __init__(self) -> None:
        self._closed = False
        with _lock:
            _live[id(self)] = self

    def start(self: _M) -> _M:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop, remove the temporary directories and give the ports back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close()
        finally:
            with _lock:
                _live.pop(id(self), None)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; make a new one")

    def __enter__(self: _M) -> _M:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_or_skip(server: _M) -> _M:
    """Start ``server``; a missing binary closes it and calls :func:`unavailable`."""
    try:
        return server.start()
    except ServerUnavailable as exc:
        server.close()
        unavailable(str(exc))


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when the starting thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill)

    return preexec


_PREEXEC = _die_with_parent()


class _Process(_Managed):
    """One server process on one port, in its own temporary directory."""

    binary = ""
    kind = "server"

    def __init__(self, port: int | None, *, startup_timeout: float, cluster_bus: bool = False):
        self._cluster_bus = cluster_bus
        self._port_given = port is not None
        self.port: int = port if port is not None else free_port(cluster_bus=cluster_bus)
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix=f"throttlekit-{self.kind}-{self.port}-"))
        self.log_path = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        super().__init__()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed" if self._closed else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"

    # subclasses -------------------------------------------------------------
    def _argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # state -------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    # lifecycle ---------------------------------------------------------------
    def start(self: _P) -> _P:
        """Start (or start again after ``stop``/``kill``, on the same port); wait until ready."""
        self._check_open()
        if self.running:
            return self
        binary = find_binary(self.binary)
        # Only a first start on a port we picked ourselves may move: a restart must keep it.
        attempts = 1 if self._port_given or self._started_once else 5
        for attempt in range(attempts):
            try:
                self._spawn(binary)
                self._wait_ready()
                break
            except _ExitedEarly:
                self._reap()
                if attempt == attempts - 1:
                    raise
                self._move_to_new_port()
            except BaseException:
                self._reap()
                raise
        self._started_once = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL). Port and directory are kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGCONT)  # in case it was paused
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown. ``start()`` brings it back on the same port."""
        if self._proc is not None:
            self._signal(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (for timeout tests).

        Returns once the kernel reports the process stopped, so a request sent next is
        certain not to be answered.
        """
        self._signal(signal.SIGSTOP)
        stat = f"/proc/{self.pid}/stat"
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                with open(stat) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                return
            if state in ("T", "t"):
                return
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def _close(self) -> None:
        try:
            self.stop(timeout=5.0)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _release_port(self.port, self._cluster_bus)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # internals ---------------------------------------------------------------
    def _spawn(self, binary: str) -> None:
        argv = self._argv(binary)
        preexec = _PREEXEC if threading.current_thread() is threading.main_thread() else None
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise _ExitedEarly(self._failure(f"exited with code {code} while starting"))
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(self._failure(f"not ready after {self.startup_timeout:g} s"))
            time.sleep(0.02)

    def _failure(self, what: str) -> str:
        return f"{self!r} {what}; log {self.log_path}:\n{self.log_tail()}"

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # its own session: the whole group
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()

    def _move_to_new_port(self) -> None:
        old = self.port
        self.port = free_port(cluster_bus=self._cluster_bus)
        _release_port(old, self._cluster_bus)
        for child in self.dir.iterdir():  # e.g. a nodes.conf written for the old port
            if child != self.log_path:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Redis


class RedisServer(_Process):
    """A throwaway ``redis-server`` (no persistence) on a spare loopback port.

    ``stop()``/``kill()`` then ``start()`` restarts it on the same port, empty.
    """

    binary = "redis-server"
    kind = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
    ) -> None:
        self.extra_args = list(extra_args)
        super().__init__(
            port,
            startup_timeout=startup_timeout,
            cluster_bus="--cluster-enabled" in self.extra_args,
        )

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *args: str | int | bytes, timeout: float = 2.0) -> Any:
        """:func:`redis_command` against this server."""
        return redis_command(self.port, *args, timeout=timeout)

    def calls(self) -> dict[str, int]:
        """Calls per command since the last ``CONFIG RESETSTAT`` (``INFO commandstats``;
        the commands a script runs count too), less those two."""
        out = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                out[name[8:]] = int(rest.split(",")[0].split("=")[1])
        out.pop("info", None)
        out.pop("config|resetstat", None)
        return out

    def _argv(self, binary: str) -> list[str]:
        return [
            binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        return _pings(self.port)


class _ClusterNode(RedisServer):
    kind = "redis-cluster"

    def __init__(self, *, node_timeout_ms: int, startup_timeout: float) -> None:
        super().__init__(
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-node-timeout", str(node_timeout_ms),
            ],
            startup_timeout=startup_timeout,
        )  # fmt: skip

    def _argv(self, binary: str) -> list[str]:
        return [*super()._argv(binary), "--cluster-config-file", f"nodes-{self.port}.conf"]


class RedisCluster(_Managed):
    """A Redis Cluster of ``masters`` (>= 3) masters, no replicas, on spare loopback ports."""

    def __init__(
        self,
        masters: int = 3,
        *,
        node_timeout_ms: int = 2000,
        startup_timeout: float = 60.0,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.startup_timeout = startup_timeout
        self._created = False
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.nodes.append(
                    _ClusterNode(node_timeout_ms=node_timeout_ms, startup_timeout=startup_timeout)
                )
        except BaseException:
            for node in self.nodes:
                node.close()
            raise
        super().__init__()

    def __repr__(self) -> str:
        return f"<RedisCluster {self.ports}>"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def port(self) -> int:
        """The first node's port: a startup node for clients."""
        return self.nodes[0].port

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.port}"

    def start(self: _C) -> _C:
        """Start the nodes, create the cluster (first time only), wait for cluster_state:ok."""
        self._check_open()
        for node in self.nodes:
            node.start()
        if not self._created:
            self._create()
            self._created = True
        self.wait_ok()
        return self

    def _create(self) -> None:
        cli = find_binary("redis-cli")
        argv = [
            cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(f"{' '.join(argv)} timed out: {exc.output!r}") from exc
        if done.returncode != 0:
            raise ServerStartError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every running node says cluster_state:ok and knows all the masters."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        want = len(self.nodes)
        last: dict[int, str] = {}
        while True:
            for node in self.nodes:
                try:
                    info = dict(
                        line.split(":", 1)
                        for line in str(node.command("CLUSTER", "INFO")).splitlines()
                        if ":" in line
                    )
                    last[node.port] = (
                        f"{info.get('cluster_state')} known={info.get('cluster_known_nodes')}"
                    )
                except (OSError, RedisReplyError) as exc:
                    last[node.port] = repr(exc)
            if all(v == f"ok known={want}" for v in last.values()):
                return
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self!r} not ok: {last}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node (``start()`` brings the same cluster back on the same ports)."""
        for node in self.nodes:
            node.stop()

    def _close(self) -> None:
        for node in self.nodes:
            node.close()


class _SentinelProcess(_Process):
    binary = "redis-server"
    kind = "redis-sentinel"

    def __init__(
        self,
        *,
        master_name: str,
        master_port: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        startup_timeout: float,
    ) -> None:
        self.master_name = master_name
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        super().__init__(None, startup_timeout=startup_timeout)

    def _argv(self, binary: str) -> list[str]:
        conf = self.dir / "sentinel.conf"
        if not conf.exists():  # on a restart, keep what the sentinel rewrote into it
            name = self.master_name
            conf.write_text(
                f"port {self.port}\n"
                f"bind {HOST}\n"
                "daemonize no\n"
                f'dir "{self.dir}"\n'
                f"sentinel monitor {name} {HOST} {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
        return [binary, str(conf), "--sentinel"]

    def _ready(self) -> bool:
        return _pings(self.port)


class RedisSentinel(_Managed):
    """A master, one replica of it and one Sentinel (quorum 1) watching them.

    ``.master``, ``.replica`` are :class:`RedisServer`\\ s (stop the master to make the sentinel
    fail over after ``down_after_ms``); ``.sentinel_port``; ``.url`` for clients.
    """

    def __init__(
        self,
        master_name: str = "mymaster",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        startup_timeout: float = 30.0,
    ) -> None:
        self.master_name = master_name
        self.startup_timeout = startup_timeout
        # Redis 7 delays a diskless full sync by 5 s to batch replicas: not here.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(extra_args=fast_sync, startup_timeout=startup_timeout)
        self.replica = RedisServer(
            extra_args=[*fast_sync, "--replicaof", HOST, str(self.master.port)],
            startup_timeout=startup_timeout,
        )
        self.sentinel = _SentinelProcess(
            master_name=master_name,
            master_port=self.master.port,
            down_after_ms=down_after_ms,
            failover_timeout_ms=failover_timeout_ms,
            startup_timeout=startup_timeout,
        )
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"<RedisSentinel sentinel={self.sentinel_port} master={self.master_port}"
            f" replica={self.replica.port}>"
        )

    @property
    def master_port(self) -> int:
        """The port of the master it was started with (after a failover, see current_master)."""
        return self.master.port

    @property
    def sentinel_port(self) -> int:
        return self.sentinel.port

    @property
    def port(self) -> int:
        return self.sentinel.port

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.master_name}"

    def current_master(self) -> tuple[str, int] | None:
        """What the sentinel reports now (``SENTINEL get-master-addr-by-name``)."""
        reply = redis_command(
            self.sentinel_port, "SENTINEL", "get-master-addr-by-name", self.master_name
        )
        if not reply:
            return None
        return str(reply[0]), int(reply[1])

    def start(self: _S) -> _S:
        """Start master, replica (wait for its link), sentinel; wait until it knows them both."""
        self._check_open()
        self.master.start()
        self.replica.start()
        deadline = time.monotonic() + self.startup_timeout
        self._wait(deadline, self._replica_linked, "replica never linked to the master")
        self.sentinel.start()
        self._wait(deadline, self._sentinel_sees_all, "sentinel never saw master and replica")
        return self

    def _replica_linked(self) -> bool:
        return _redis_info(self.replica.port, "replication").get("master_link_status") == "up"

    def _sentinel_sees_all(self) -> bool:
        if self.current_master() != (HOST, self.master.port):
            return False
        fields = redis_command(self.sentinel_port, "SENTINEL", "MASTER", self.master_name)
        master = dict(zip(fields[::2], fields[1::2], strict=False))
        return bool(master.get("flags") == "master" and int(master.get("num-slaves", 0)) >= 1)

    def _wait(self, deadline: float, check: Callable[[], bool], what: str) -> None:
        while True:
            try:
                if check():
                    return
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self!r}: {what}\n{self.sentinel.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sentinel, replica, master (``start()`` brings them back on the same ports)."""
        self.sentinel.stop()
        self.replica.stop()
        self.master.stop()

    def _close(self) -> None:
        for part in (self.sentinel, self.replica, self.master):
            part.close()


# --------------------------------------------------------------------------- memcached


class MemcachedServer(_Process):
    """A throwaway ``memcached`` (TCP only, ``memory_mb`` MB) on a spare loopback port."""

    binary = "memcached"
    kind = "memcached"

    def __init__(
        self,
        port: int | None = None,
        *,
        memory_mb: int = 64,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)
        super().__init__(port, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        return f"memcached://{HOST}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it: a SIGKILL, which ends it as SIGTERM would but at once (memcached's clean
        shutdown waits for its once-a-second clock, 1 s per stop), unless it keeps its items
        in a memory file (``-e``/``--memory-file``): that one needs the clean shutdown."""
        if any(a == "-e" or a.startswith("--memory-file") for a in self.extra_args):
            super().stop(timeout)
        else:
            self.kill()

    def _argv(self, binary: str) -> list[str]:
        argv = [binary, "-l", HOST, "-p", str(self.port), "-U", "0", "-m", str(self.memory_mb)]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without it
        return [*argv, *self.extra_args]

    def _ready(self) -> bool:
        try:
            memcached_version(self.port, timeout=0.5)
        except (OSError, ValueError):
            return False
        return True
