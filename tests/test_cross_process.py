"""Exactness across processes: 4 processes x 2,000 hits on one key admit exactly the limit.

Parametrised over shared backends and every strategy each supports; a backend joins by
adding itself to ``URL_OF`` (name -> the storage URL of its session context).
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from backends import NAMES
from throttlekit import Limiter, Rate, storage_from_url

PROCESSES, HITS, LIMIT = 4, 2_000, 1_000
# A 30-day period: nothing refills or slides during the test, and a window boundary is
# checked for below, so the admitted count must be exactly LIMIT.
RATE = Rate(LIMIT, 86400.0 * 30)

BACKEND_MODULES = {name: importlib.import_module(f"backends.{name}") for name in NAMES}

#: backend name -> storage URL of its session context
URL_OF: dict[str, Callable[[Any], str]] = {
    "redis": lambda ctx: ctx.url,
    "redis_cluster": lambda ctx: ctx.url,
    "redis_sentinel": lambda ctx: ctx.url,
    "memcached": lambda ctx: ctx.url,
}

CASES = [
    pytest.param(name, strategy, id=f"{name}-{strategy}", marks=BACKEND_MODULES[name].MARKS)
    for name in URL_OF
    for strategy in sorted(BACKEND_MODULES[name].STRATEGIES)
]


def _worker(url: str, prefix: str, strategy: str, start_at: float) -> int:
    limiter = Limiter(
        storage_from_url(url, prefix=prefix, socket_timeout=5.0),
        strategy=strategy,
        on_storage_error="deny",  # a store error must not pass for an admission
    )
    time.sleep(max(0.0, start_at - time.time()))
    admitted = sum(limiter.hit("hot", RATE).allowed for _ in range(HITS))
    limiter.storage.close()
    return admitted


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strategy"), CASES)
def test_processes_admit_exactly_the_limit(
    name: str, strategy: str, _backend_contexts: dict[str, Any]
) -> None:
    """Concurrent hits from several processes on one key admit exactly `limit`, no more, no less."""
    url = URL_OF[name](_backend_contexts["get"](name))
    period = RATE.period
    if period - time.time() % period < 120:  # pragma: no cover - once a month
        pytest.skip("too close to a window boundary")
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5  # all processes start hitting together
    with ctx.Pool(PROCESSES) as pool:
        counts = pool.starmap(_worker, [(url, prefix, strategy, start_at)] * PROCESSES)
    storage = storage_from_url(url, prefix=prefix)
    storage.reset(["hot"])
    storage.close()
    assert sum(counts) == LIMIT, counts
