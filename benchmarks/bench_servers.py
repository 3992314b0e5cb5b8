"""Real servers under load: bare app vs throttlekit vs the peer, on memory and on Redis.

Serves the apps of ``server_apps.py`` on loopback ports, Flask under gunicorn (``-w 2``,
sync and gthread workers) and Starlette under uvicorn (``--workers 2``), and drives each with
wrk (Debian's ``wrk`` package) for a fixed time. For each server, the modes: the bare app;
throttlekit on memory, on Redis, and on Redis behind ``SyncedStorage`` (local leases of
quota, see docs/backends.md); the peer (Flask-Limiter for Flask, SlowAPI for Starlette) on
memory and on Redis. Every limited app charges one far-away limit per client IP, so every
request is allowed and charged (one hot key: all of wrk's requests come from 127.0.0.1).

Run (about 5 minutes: each server's six apps are started together and wrk visits them in
turn, 2 s each, 7 rounds in rotated order, so load that comes and goes on a shared machine
hits every mode alike; medians are reported)::

    python benchmarks/bench_servers.py --duration 2 --repeats 7

(``--servers``, ``--modes``: a subset; ``--private-redis``: on a redis-server of the run's
own, whose commands per request are printed after the table.) It prints a Markdown table:
req/s, p50 and p99 latency, and req/s as a ratio to the bare
app on the same server. The shared Redis on 127.0.0.1:6379 is used with a fresh key prefix
per run and never flushed. ``test_servers_smoke`` runs a short version in the suite (bare
and SyncedStorage on each server) and checks the issue's target at a loose bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
REDIS = "redis://127.0.0.1:6379/0"
SERVERS = ("gunicorn-sync", "gunicorn-gthread", "uvicorn")
MODES = ("bare", "tk-memory", "tk-redis", "tk-synced", "peer-memory", "peer-redis")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(server: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "server_apps:starlette_app", "--app-dir",
                str(HERE), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                "--log-level", "warning", "--no-access-log"]
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", bind, "--chdir", str(HERE),
           "--log-level", "warning"]
    if server == "gunicorn-gthread":
        cmd += ["-k", "gthread", "--threads", "4"]
    return [*cmd, "server_apps:flask_app"]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server ``pid`` and its workers so far."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(server: str, mode: str, prefix: str, redis: str = REDIS
            ) -> Iterator[tuple[str, int]]:
    """Serve ``mode``'s app under ``server``; yields its URL and pid once it answers 200
    (with throttlekit's rate-limit headers, for its modes: the limit is applied)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", TK_BENCH_MODE=mode,
               TK_BENCH_PREFIX=prefix, TK_BENCH_REDIS=redis, PYTHONWARNINGS="ignore",
               TK_BENCH_SERVER="starlette" if server == "uvicorn" else "flask")
    proc = subprocess.Popen(_command(server, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{server} {mode} exited: {err[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        limited = r.headers.get("RateLimit") is not None
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if mode.startswith("tk-") and not limited:
            raise RuntimeError(f"{server} {mode}: answered without rate-limit headers, so "
                               "its limit is not applied (nothing would be measured)")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, duration: float, connections: int = 16, pid: int | None = None
        ) -> dict[str, float]:
    """Drive ``url`` with wrk for ``duration`` whole seconds: req/s, p50 and p99 (ms), non-2xx,
    and with the server's ``pid``, its CPU time per request (µs, workers included)."""
    cpu = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu = (cpu_seconds(pid) - cpu) * 1e6 / max(count, 1) if pid else 0.0
    return {"rps": rps, "p50": _ms(lat["50"]), "p99": _ms(lat["99"]),
            "non2xx": float(bad.group(1)) if bad else 0.0, "cpu": cpu,
            "requests": float(count)}


def run(servers: Sequence[str], modes: Sequence[str], duration: float, repeats: int,
        warmup: float = 1.0, redis: str = REDIS
        ) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Every mode of each server, ``repeats`` times: all of a server's modes are started at
    once (idle servers cost nothing) and wrk visits them in turn, the order rotated each
    round, so load that comes and goes on a shared machine hits every mode alike. Each
    (server, mode) has its own Redis prefix. The warm-up runs are not in the results."""
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    tag = uuid.uuid4().hex[:8]
    for server in servers:
        with contextlib.ExitStack() as stack:
            urls = {mode: stack.enter_context(
                serving(server, mode, f"tk-bench-servers:{tag}:{server}:{mode}:", redis))
                for mode in modes}
            for url, pid in urls.values():
                wrk(url, warmup, pid=pid)
            for rep in range(repeats):
                turn = list(modes[rep % len(modes):]) + list(modes[:rep % len(modes)])
                for mode in turn:
                    url, pid = urls[mode]
                    r = wrk(url, duration, pid=pid)
                    results.setdefault((server, mode), []).append(r)
                    print(f"  {server:17} {mode:12} {r['rps']:8.0f} req/s  p50 {r['p50']:.2f}"
                          f" ms  p99 {r['p99']:.2f} ms  cpu {r['cpu']:.0f} us/req"
                          f"  non-2xx {r['non2xx']:.0f}",
                          file=sys.stderr, flush=True)
    return results


def medians(results: dict[tuple[str, str], list[dict[str, float]]]
            ) -> dict[tuple[str, str], dict[str, float]]:
    return {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]}
            for k, rs in results.items()}


def table(med: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = ["| server | mode | req/s | p50 ms | p99 ms | req/s / bare | server CPU µs/req |"
             " bare CPU / CPU | non-2xx |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (server, mode), m in med.items():
        base = med.get((server, "bare"), {})
        ratio = f"{m['rps'] / base['rps']:.2f}" if base else "-"
        cpu = f"{base['cpu'] / m['cpu']:.2f}" if base and m["cpu"] else "-"
        lines.append(f"| {server} | {mode} | {m['rps']:.0f} | {m['p50']:.2f} | "
                     f"{m['p99']:.2f} | {ratio} | {m['cpu']:.0f} | {cpu} | "
                     f"{m['non2xx']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--servers", nargs="*", default=list(SERVERS), choices=SERVERS)
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--private-redis", action="store_true",
                   help="run a redis-server of this run's own and print the commands it "
                        "ran per request served by the Redis modes (INFO commandstats)")
    a = p.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with private_redis() if a.private_redis else contextlib.nullcontext(REDIS) as url:
        results = run(a.servers, a.modes, a.duration, a.repeats, redis=url)
        stats = commandstats(url) if a.private_redis else {}
    print(f"{started}, {os.cpu_count()} cores, medians of {a.repeats} runs of "
          f"{a.duration:g} s, wrk -t1 -c16\n")
    print(table(medians(results)))
    if stats:
        served = sum(r["requests"] for (_, mode), rs in results.items()
                     if "redis" in mode or "synced" in mode for r in rs)
        print(f"\nRedis commands per request of the Redis modes ({served:.0f} requests, "
              "warm-ups not counted in requests):")
        for name, calls in sorted(stats.items()):
            print(f"  {name}: {calls} ({calls / max(served, 1):.4f}/request)")


# -- the short version in the suite -------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this run's own on a free loopback port (its ``INFO commandstats``
    counts only this run's commands); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is missing")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def commandstats(url: str) -> dict[str, int]:
    """The calls of each command the Redis at ``url`` ran (``INFO commandstats``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v.get("calls", 0)) for k, v in stats.items()}


def scripts_run(url: str) -> int:
    """The scripts (EVAL/EVALSHA: one per throttlekit round trip) the Redis at ``url`` ran."""
    stats = commandstats(url)
    return stats.get("eval", 0) + stats.get("evalsha", 0)


def best(results: list[dict[str, float]], field: str, lowest: bool = False) -> float:
    """The best of the rounds: load from other processes only ever lowers req/s and raises
    CPU per request (cache, scheduler), so the best round is the closest to the truth."""
    values = [r[field] for r in results]
    return min(values) if lowest else max(values)


@pytest.mark.parametrize("framework", ["flask", "starlette"])
def test_throttlekit_apps_charge_their_limit(framework: str) -> None:
    """The app served as a throttlekit mode charges its limit on every request (the Flask
    app once wrapped a Limiter with rules in ``Throttle`` alone, which applies none of
    them: the smoke and the docs' table measured a bare app)."""
    import httpx

    import server_apps

    async def three(app: Any) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get("/") for _ in range(3)]

    # The app counts in fixed windows of an hour of the real clock: the figures below hold
    # when no hour boundary falls among the requests, else a fresh app serves them again (a
    # precondition, not a timing).
    for _attempt in range(3):
        hour = time.time() // 3600
        if framework == "flask":
            client = server_apps.make_flask("tk-memory").test_client()
            responses: list[Any] = [client.get("/") for _ in range(3)]
        else:
            responses = asyncio.run(three(server_apps.make_starlette("tk-memory")))
        if time.time() // 3600 == hour:
            break
    assert [r.status_code for r in responses] == [200] * 3
    left = [re.search(r";r=(\d+)", r.headers["RateLimit"]) for r in responses]
    limit = int(server_apps.RATE.split("/")[0])  # (1,000,000,000)
    assert [int(m.group(1)) for m in left if m] == [limit - 1, limit - 2, limit - 3]


@pytest.mark.redis
@pytest.mark.parametrize("server", SERVERS)
def test_servers_smoke(server: str, target: Any) -> None:
    """Under a real server, SyncedStorage on Redis answers every request 200, reaches Redis
    for a small share of them (leases, not a round trip per request: counted on a private
    redis-server) and serves the issue's 0.9x of the bare app's req/s (asserted at the loose
    bound in the smoke pass). Seven interleaved rounds, the best of each mode compared: one
    second's run on a shared host swings 3x (bare gthread: 624-2,203 req/s in ten runs)."""
    if shutil.which("wrk") is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("wrk is missing (CI=true: a missing load generator is an error)")
        pytest.skip("wrk is missing: apt-get install -y wrk")
    duration = target.size(2.0, 1.0)
    with private_redis() as url:
        results = target.run(lambda: run([server], ["bare", "tk-synced"], duration=duration,
                                         repeats=7, warmup=1.0, redis=url))
        scripts = scripts_run(url)
    synced, bare = results[(server, "tk-synced")], results[(server, "bare")]
    served = sum(r["requests"] for r in synced)
    print(f"{server}: {scripts} round trips to Redis for more than {served:.0f} requests; "
          f"CPU us/req best bare {best(bare, 'cpu', True):.0f}, synced "
          f"{best(synced, 'cpu', True):.0f}")
    assert sum(r["non2xx"] for r in synced) == 0
    # a round trip per request (no lease reused) is 1.0; leases measured 0.006-0.04 under
    # gthread on a loaded host (0.02-0.25 while its threads did not wait for each other)
    assert 0 < scripts <= 0.5 * served, (scripts, served)
    # (the smoke bound stays 0.45, as before the slack went to 1.5: uvicorn read 0.44 once
    # in a smoke pass; so a 2x slowdown of a 0.9-1.1 figure still passes here)
    target.at_least(f"{server} SyncedStorage req/s / bare", best(synced, "rps") /
                    best(bare, "rps"), 0.9, loose=0.45)


if __name__ == "__main__":
    main()
