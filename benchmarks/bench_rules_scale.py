"""What many throttles cost a request: rules indexed by what they match (issue 14).

Run: ``python benchmarks/bench_rules_scale.py`` (prints the figures and checks the targets)
or ``python -m pytest -q -p no:cacheprovider benchmarks/bench_rules_scale.py`` (checks them);
``python benchmarks/bench_rules_scale.py instructions`` counts instructions per request of
``one`` and ``fifty-apply`` under callgrind instead (the same count whatever the machine's
load: the figure to compare versions by), and what each applying rule adds.

A trivial WSGI app behind ``WSGIMiddleware`` on memory storage, called in-process (an environ
built and the app called directly, no HTTP), one hot client, limits far above the traffic:

- ``one``: one throttle (per client, ``path_prefix="/api/"``);
- ``fifty-one-applies``: the same throttle and 49 others declaring methods, paths, path
  prefixes and hosts the request does not have;
- ``fifty-callables`` (shown, not a target): the 49 others as ``match=`` callables, which the
  engine must ask one by one;
- ``fifty-apply``: 50 throttles that all apply (each its own counter).

Each variant's CPU time per request (``time.process_time``: what the process ran, not what
the shared machine let it) is the median of ``ROUNDS`` interleaved rounds of ``BATCH``
requests, so the machine's noise hits every variant alike. Targets, as ratios in one run:
50 rules of which one applies cost at most ``MAX_RATIO_ONE_OF_FIFTY`` times one rule, and
each applying rule adds at most ``MAX_US_PER_APPLYING_RULE`` microseconds.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import Limiter, WSGIMiddleware

#: 50 rules of which one applies, against one rule (the issue's target)
MAX_RATIO_ONE_OF_FIFTY = 1.3
#: what each applying rule may add to a request, in microseconds (the issue's target)
MAX_US_PER_APPLYING_RULE = 1.0
#: instructions a µs of this code runs on the 2-core machine (9,000-11,800 measured at loads
#: 0-16: ``bench_rules_scale.py instructions`` against its timed run)
INSTRUCTIONS_PER_US = 10_000
N_RULES = 50
BATCH = 500
ROUNDS = 11
RATE = "1000000000/minute"

Setup = Callable[[Limiter], None]


def _one(lim: Limiter) -> None:
    lim.throttle("api", RATE, path_prefix="/api/")


def _others_declared(lim: Limiter) -> None:
    """49 rules the request does not match, declared (the index skips them)."""
    for i in range(N_RULES - 1):
        kind = i % 4
        if kind == 0:
            lim.throttle(f"p{i}", RATE, path_prefix=f"/v{i}/")
        elif kind == 1:
            lim.throttle(f"m{i}", RATE, methods="POST", path_prefix=f"/api/w{i}/")
        elif kind == 2:
            lim.throttle(f"x{i}", RATE, paths=[f"/login{i}", f"/signup{i}"])
        else:
            lim.throttle(f"h{i}", RATE, hosts=f"h{i}.example.com")


def _others_callables(lim: Limiter) -> None:
    """49 rules the request does not match, as match callables (asked one by one)."""
    for i in range(N_RULES - 1):
        prefix = f"/v{i}/"
        lim.throttle(f"p{i}", RATE, match=lambda v, p=prefix: v.path.startswith(p))


def _fifty_apply(lim: Limiter) -> None:
    for i in range(N_RULES):
        lim.throttle(f"a{i}", RATE, path_prefix="/api/")


def _one_of_fifty(lim: Limiter) -> None:
    _one(lim)
    _others_declared(lim)


def _one_of_fifty_callables(lim: Limiter) -> None:
    _one(lim)
    _others_callables(lim)


VARIANTS: dict[str, Setup] = {
    "one": _one,
    "fifty-one-applies": _one_of_fifty,
    "fifty-callables": _one_of_fifty_callables,
    "fifty-apply": _fifty_apply,
}


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _runner(setup: Setup) -> Callable[[], None]:
    lim = Limiter("memory://")
    setup(lim)
    app = WSGIMiddleware(_app, lim)
    base = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/api/items", "QUERY_STRING": "",
        "REMOTE_ADDR": "198.51.100.7", "HTTP_HOST": "www.example.com",
        "SERVER_NAME": "www.example.com", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        assert status[:3] == "200", status

    def run() -> None:
        for _ in range(BATCH):
            app(dict(base), start_response)

    run()  # warm: bind batches, build the memo
    return run


def measure(rounds: int = ROUNDS) -> dict[str, float]:
    """Microseconds per request of each variant: the median of interleaved rounds."""
    runners = {name: _runner(setup) for name, setup in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.process_time()
            run()
            times[name].append((time.process_time() - t0) / BATCH * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def figures(us: dict[str, float]) -> tuple[float, float]:
    """(50 rules of which one applies / one rule, µs added per applying rule)."""
    ratio = us["fifty-one-applies"] / us["one"]
    per_rule = (us["fifty-apply"] - us["one"]) / (N_RULES - 1)
    return ratio, per_rule


@functools.cache
def _measured() -> dict[str, float]:
    return measure()


def test_fifty_rules_of_which_one_applies_cost_at_most_1_3x_one(target: Any) -> None:
    """50 rules of which one applies cost at most 1.3x one rule (medians of interleaved
    rounds, one run): the index skips the 49 without asking them. Asserted through the
    ``target`` fixture (at the loose bound in the smoke pass, as every target)."""
    us = target.run(_measured)
    ratio, _ = figures(us)
    target.at_most("50 rules of which one applies / one rule", ratio, MAX_RATIO_ONE_OF_FIFTY)


def test_each_applying_rule_adds_at_most_1_us(target: Any) -> None:
    """Each rule that applies adds at most 1 µs to a request (50 applying against one).
    When measuring: in CPU time, at 1 µs (0.83 µs on a quiet machine, about 11,600
    instructions a rule; 1.3 µs at load 5: see docs/benchmarks.md). In the smoke pass, a
    timed µs on a shared machine moves 2x with its load (3.2 µs in a CI run at load), so the
    loose bound is checked in instructions, which do not move: at ``INSTRUCTIONS_PER_US`` a
    µs, under valgrind."""
    if not target.measuring:
        if shutil.which("valgrind") is None:
            if os.environ.get("CI", "").strip().lower() == "true":
                pytest.fail("valgrind is missing (CI=true: apt-get install -y valgrind)")
            pytest.skip("valgrind is missing: apt-get install -y valgrind")
        per_rule = target.run(lambda: (instructions("fifty-apply", 1) - instructions("one", 1))
                              / (N_RULES - 1))
        target.at_most(f"instructions added per applying rule / {INSTRUCTIONS_PER_US:,} "
                       "(a µs here)", per_rule / INSTRUCTIONS_PER_US, MAX_US_PER_APPLYING_RULE)
        return
    us = target.run(_measured)
    _, per_rule = figures(us)
    target.at_most("µs added per applying rule", per_rule, MAX_US_PER_APPLYING_RULE)


def instructions(variant: str, batches: int = 2) -> float:
    """Instructions per request of ``variant`` (callgrind, counting only inside the
    ``functools.reduce`` that runs ``batches`` batches after the warm one)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}",
             sys.executable, __file__, "run", variant, str(batches)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, check=True, capture_output=True,
        )
        with open(out) as f:
            total = next(float(line.split()[1]) for line in f if line.startswith("totals:"))
    return total / (batches * BATCH)


def main() -> int:
    if sys.argv[1:2] == ["run"]:  # (the child of ``instructions``)
        run = _runner(VARIANTS[sys.argv[2]])
        functools.reduce(lambda _, __: run(), range(int(sys.argv[3])), None)
        return 0
    if sys.argv[1:2] == ["instructions"]:
        one, fifty = instructions("one"), instructions("fifty-apply")
        print(f"one: {one:,.0f}, fifty-apply: {fifty:,.0f} instructions per request; "
              f"{(fifty - one) / (N_RULES - 1):,.0f} per applying rule")
        return 0
    us = measure()
    for name, t in us.items():
        print(f"{name:>20}: {t:7.2f} µs/request ({t / us['one']:.2f}x one)")
    ratio, per_rule = figures(us)
    ok = ratio <= MAX_RATIO_ONE_OF_FIFTY and per_rule <= MAX_US_PER_APPLYING_RULE
    print(f"50 rules, one applying / one rule: {ratio:.2f}x (target <= "
          f"{MAX_RATIO_ONE_OF_FIFTY}x); per applying rule: {per_rule:.2f} µs (target <= "
          f"{MAX_US_PER_APPLYING_RULE} µs): {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
