"""Interleave two checkouts of throttlekit on the same in-process middleware workload.

    python benchmarks/compare_versions.py OLD/src NEW/src [wsgi|asgi|hit] [one|two|full] [runs]

Each run is a fresh process serving 100,000 allowed requests through ``WSGIMiddleware`` or
``ASGIMiddleware`` on the memory store (the ASGI coroutine driven by hand, no event loop),
with one throttle (``one``), two (``two``), or lists, fail2ban and two throttles (``full``);
``hit``: 100,000 direct ``Limiter.hit`` calls of one rate (``one``) or two (``two``).
The two versions run in turn, A B A B ..., and the CPU time of each child is taken from the
kernel's accounting, less that of a run of one request (the start-up: interpreter and
imports), per request; the median ratio NEW/OLD is what to quote (the machines are noisy).
``COMPARE_N`` sets the number of requests.

``COMPARE_COUNT=instructions`` counts instructions under ``valgrind --tool=callgrind``
instead of timing (the same count run after run, whatever else the machine is doing: the
figure to quote on a shared machine); then ``runs`` is 1 and ``COMPARE_N`` defaults to
20,000.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile

COUNT = os.environ.get("COMPARE_COUNT", "cpu")
N = int(os.environ.get("COMPARE_N", "20000" if COUNT == "instructions" else "100000"))

WORKLOAD = r'''
import sys
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
kind, variant, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lim = Limiter("memory://")
R = "1000000000/minute"
if variant == "one":
    lim.throttle("per-ip", R)
elif variant == "two":
    lim.throttle("a", R)
    lim.throttle("b", R, key="ip")
else:
    lim.safelist("health", lambda r: r.path == "/healthz")
    lim.blocklist("bad-nets", ips=["203.0.113.0/24"])
    lim.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-"), maxretry=3,
                 findtime=60, bantime=600)
    lim.throttle("per-ip", R)
    lim.throttle("burst", R, strategy="token_bucket")
if kind == "hit":
    direct = Limiter("memory://")
    rate = "1000000000/minute" if variant == "one" else "1000000000/minute; 1000000000/hour"
    for _ in range(n):
        direct.hit("user:42", rate)
elif kind == "wsgi":
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    mw = WSGIMiddleware(app, lim)
    def start_response(status, headers, exc_info=None):
        pass
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "198.51.100.7",
            "HTTP_ACCEPT": "*/*"}
    for _ in range(n):
        for _chunk in mw(dict(base), start_response):
            pass
else:
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    mw = ASGIMiddleware(app, lim)
    async def receive():
        return {"type": "http.request", "body": b""}
    async def send(message):
        pass
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
                 "headers": [(b"accept", b"*/*")], "client": ("198.51.100.7", 1)}
        coro = mw(scope, receive, send)
        try:
            coro.send(None)
        except StopIteration:
            pass
'''


def cpu_of(src: str, kind: str, variant: str, n: int = N) -> float:
    if COUNT == "instructions":
        return instructions_of(src, kind, variant, n)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    subprocess.run([sys.executable, "-c", WORKLOAD, kind, variant, str(n)], env=env,
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def instructions_of(src: str, kind: str, variant: str, n: int) -> float:
    """Instructions the child runs (callgrind's total ``Ir``), in place of CPU seconds."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src), "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-c", WORKLOAD, kind, variant, str(n)],
            env=env, check=True, capture_output=True,
        )
        with open(out) as f:
            for line in f:
                if line.startswith("totals:"):
                    return float(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def per_request(src: str, kind: str, variant: str) -> float:
    """CPU seconds per request: a run of N requests less a run of one (the start-up:
    the interpreter and the imports)."""
    return (cpu_of(src, kind, variant) - cpu_of(src, kind, variant, 1)) / (N - 1)


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "wsgi"
    variant = sys.argv[4] if len(sys.argv) > 4 else "one"
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 1 if COUNT == "instructions" else 7
    # warm-up: disk caches, .pyc files
    cpu_of(old, kind, variant, 1 if COUNT == "instructions" else N)
    cpu_of(new, kind, variant, 1 if COUNT == "instructions" else N)
    ratios, olds, news = [], [], []
    for _ in range(runs):
        a = per_request(old, kind, variant)
        b = per_request(new, kind, variant)
        olds.append(a)
        news.append(b)
        ratios.append(b / a)
    if COUNT == "instructions":
        print(f"{kind} {variant}: old {statistics.median(olds):,.0f}, new "
              f"{statistics.median(news):,.0f} instructions per request (start-up "
              f"excluded); new/old {statistics.median(ratios):.3f}")
        return
    print(f"{kind} {variant}: old {statistics.median(olds) * 1e6:.2f} µs, new "
          f"{statistics.median(news) * 1e6:.2f} µs CPU per request (medians of {runs}, "
          f"start-up excluded); new/old median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
