"""What admission control costs per request: ``try_acquire`` + ``release`` against a bare lock.

Run: ``python -m pytest benchmarks/bench_admission.py --benchmark-enable --benchmark-only``

One round is one admitted request: ``Admission.try_acquire(priority)`` then
``Ticket.release()`` (the clock read twice, the latency summed; a window closes about once
a second as in production). The baseline is a bare ``threading.Lock`` acquire/release
pair; ``test_ratio`` interleaves both in the same run and reports the ratio (no target: it
is recorded in docs/benchmarks.md). The shed path (a refusal, no ticket) is timed too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from throttlekit._admission import AdaptiveLimit, Admission


def _bare() -> Callable[[], None]:
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def one() -> None:
        acquire()
        release()

    return one


def _admitted() -> Callable[[], None]:
    admission = Admission()
    try_acquire = admission.try_acquire

    def one() -> None:
        ticket = try_acquire(2)
        assert ticket is not None
        ticket.release()

    return one


def _shed() -> Callable[[], None]:
    admission = Admission(AdaptiveLimit(thresholds=(0.5, 1.0), initial_limit=4, min_limit=4))
    for _ in range(2):
        admission.try_acquire(1)  # holds half the limit: priority 0 is shed
    try_acquire = admission.try_acquire

    def one() -> None:
        try_acquire(0)

    return one


VARIANTS = {"bare-lock": _bare, "admitted": _admitted, "shed": _shed}


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_request(benchmark, kind):
    """One lock pair; one admitted request (acquire + release); one shed request."""
    benchmark.group = "admission per request"
    benchmark(VARIANTS[kind]())


def _per_call(fn: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def test_ratio(request, benchmark):
    """acquire + release over a bare lock pair, interleaved, best of rounds (same run)."""
    options = request.config.option
    enabled = options.benchmark_enable or not options.benchmark_disable
    n, rounds = (200_000, 7) if enabled else (500, 1)
    fns = {k: make() for k, make in VARIANTS.items()}
    best = dict.fromkeys(fns, float("inf"))

    def interleaved() -> None:
        for _ in range(rounds):  # noise only ever adds time
            for k, fn in fns.items():
                best[k] = min(best[k], _per_call(fn, n))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    ratios = {k: best[k] / best["bare-lock"] for k in ("admitted", "shed")}
    benchmark.extra_info.update({f"{k}/bare-lock": round(v, 2) for k, v in ratios.items()})
    print(
        f"\nbare lock pair {best['bare-lock'] * 1e9:.0f} ns; "
        f"admitted {best['admitted'] * 1e9:.0f} ns ({ratios['admitted']:.1f}x); "
        f"shed {best['shed'] * 1e9:.0f} ns ({ratios['shed']:.1f}x)"
    )
