"""Where the middleware's added latency goes inside a framework, stage by stage (issue 14).

Run: ``python benchmarks/breakdown.py [ROUNDS]`` (default 11). Prints a table per framework,
and first two steps timed alone in a tight loop (the store hit, the rate-limit fields).

The workload of ``bench_middleware.py`` (one throttle, one hot client, memory store, Flask 3
for WSGI and Starlette for ASGI, called in-process). Each stage is a wrapper doing the
middleware's work up to that point, the last two the middleware itself:

- ``view, kept``: the request view built (nothing holds it: no reference cycle to break);
- ``view``: the same, detached when the app has answered (its copy of the environ);
- ``+ key``: the view's client key read (what the throttle counts by);
- ``+ rule``: the throttle's bound store hit on that key (lock, clock, algorithm, Decision);
- ``+ engine``: ``engine.evaluate`` instead of the bare hit (the verdict; into the environ);
- ``middleware, no headers``: ``headers_on_allowed=False``;
- ``middleware``: as shipped (the rate-limit fields added to every allowed response).

CPU time (``time.process_time``), interleaved rounds of ``N`` batches of 100 requests; each
stage's added latency is the median over rounds of its time less the bare app's in the same
round. The stages are diagnostic copies of the middleware's steps: the shipped code is the
last row; what lies between two rows is that step's share inside the framework, which is two
to three times its cost in a tight loop around a trivial app (see docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_middleware as bm
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit._request import DEFAULT_MAX_FORM_BYTES, RequestView, build_view
from throttlekit._responder import VERDICT_KEY
from throttlekit._responses import rate_limit_headers

STAGES = ["view, kept", "view", "+ key", "+ rule", "+ engine", "middleware, no headers",
          "middleware"]
N = {"wsgi": 100, "asgi": 300}


def _wsgi_stage(stage: str) -> Any:
    app = bm._flask_app()
    if stage == "bare":
        return app
    limiter = bm._rules(Limiter(), full=False)
    inner = app.wsgi_app
    if stage.startswith("middleware"):
        app.wsgi_app = WSGIMiddleware(inner, limiter,
                                      headers_on_allowed=stage == "middleware")
        return app
    resolver = WSGIMiddleware(inner, limiter).resolver
    engine = limiter.engine
    hit = engine.rules.throttles[0].hit
    key, rule, full = not stage.startswith("view"), stage == "+ rule", stage == "+ engine"
    if stage == "view, kept":
        def kept(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            build_view(RequestView, environ, resolver, None, DEFAULT_MAX_FORM_BYTES, True)
            return inner(environ, start_response)

        app.wsgi_app = kept
        return app

    def staged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        view = build_view(RequestView, environ, resolver, None, DEFAULT_MAX_FORM_BYTES, True)
        if full:
            environ[VERDICT_KEY] = engine.evaluate(view)
        elif rule:
            hit(view.client_key, 1, None)
        elif key:
            view.client_key  # noqa: B018
        try:
            return inner(environ, start_response)
        finally:
            view.detach()

    app.wsgi_app = staged
    return app


def _asgi_stage(stage: str) -> Any:
    app = bm._starlette_app()
    if stage == "bare":
        return app
    limiter = bm._rules(Limiter(), full=False)
    if stage.startswith("middleware"):
        return ASGIMiddleware(app, limiter, headers_on_allowed=stage == "middleware")
    resolver = ASGIMiddleware(app, limiter).resolver
    engine = limiter.engine
    hit = engine.rules.throttles[0].hit
    key, rule, full = not stage.startswith("view"), stage == "+ rule", stage == "+ engine"
    if stage == "view, kept":
        async def kept(scope: dict[str, Any], receive: Any, send: Any) -> None:
            build_view(RequestView, scope, resolver, None, DEFAULT_MAX_FORM_BYTES, False)
            await app(scope, receive, send)

        return kept

    async def staged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        view = build_view(RequestView, scope, resolver, None, DEFAULT_MAX_FORM_BYTES, False)
        if full:
            scope[VERDICT_KEY] = engine.evaluate(view)
        elif rule:
            hit(view.client_key, 1, None)
        elif key:
            view.client_key  # noqa: B018
        try:
            await app(scope, receive, send)
        finally:
            view.detach()

    return staged


def breakdown(kind: str, rounds: int) -> tuple[float, dict[str, float]]:
    """The bare request's CPU time and each stage's added latency, in µs (medians)."""
    make, batch = ((_wsgi_stage, bm._wsgi_batch) if kind == "wsgi"
                   else (_asgi_stage, bm._asgi_batch))
    batches = {stage: batch(make(stage)) for stage in ["bare", *STAGES]}
    n = N[kind]
    per_round: list[dict[str, float]] = []
    try:
        for _ in range(rounds):
            took = {}
            for stage, fn in batches.items():
                began = time.process_time()
                for _ in range(n):
                    fn()
                took[stage] = (time.process_time() - began) / n / bm.BATCH * 1e6
            per_round.append(took)
    finally:
        for fn in batches.values():
            loop = getattr(fn, "loop", None)
            if loop is not None:
                loop.close()
    bare = statistics.median(r["bare"] for r in per_round)
    return bare, {s: statistics.median(r[s] - r["bare"] for r in per_round) for s in STAGES}


def tight_loops(n: int = 200_000) -> dict[str, float]:
    """Two steps alone in a tight loop, in µs (best of 5): the throttle's bound store hit
    and the rate-limit fields of its Decision (one draft10 policy)."""
    limiter = bm._rules(Limiter(), full=False)
    hit = limiter.engine.rules.throttles[0].hit
    policies = [("per-ip", hit(bm.PEER, 1, None))]
    steps: dict[str, Callable[[], object]] = {
        "store hit": lambda: hit(bm.PEER, 1, None),
        "rate-limit fields": lambda: rate_limit_headers(policies, "draft10"),
    }
    out = {}
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(5):
            began = time.process_time()
            for _ in range(n):
                fn()
            best = min(best, time.process_time() - began)
        out[name] = best / n * 1e6
    return out


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    loops = tight_loops()
    print("in a tight loop: " + ", ".join(f"{k} {v:.2f} µs" for k, v in loops.items()))
    for kind, name in (("wsgi", "Flask (WSGI)"), ("asgi", "Starlette (ASGI)")):
        bare, added = breakdown(kind, rounds)
        print(f"\n{name}: bare request {bare:.2f} µs")
        print(f"{'stage':<24}{'added µs':>10}{'step µs':>9}{'/ bare':>8}")
        before = 0.0
        for stage in STAGES:
            print(f"{stage:<24}{added[stage]:>10.2f}{added[stage] - before:>9.2f}"
                  f"{added[stage] / bare:>8.3f}")
            before = added[stage]


if __name__ == "__main__":
    main()
