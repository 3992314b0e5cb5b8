"""Session 27: the Redis store as issue 14 left it, attacked as a user hits it, against
private redis-servers (never the shared 6379).

* A threaded server on Redis: the limiter's local denial cache (a cachetools TLRUCache) was
  used from every thread without a lock, and cachetools' caches are not thread-safe: a
  refusal remembered while another thread read or dropped one raised ``KeyError`` or
  ``RuntimeError: list changed size during iteration`` into the request (a 500).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def test_threads_sharing_a_limiter_on_redis_never_see_the_denial_cache_break(
    server: RedisServer,
) -> None:
    """Eight threads of one process (a threaded WSGI server) hit 64 clients at 1/minute on
    one limiter whose denial cache holds 8 refusals: refusals are remembered, served,
    evicted and expired all the time, from every thread. Every call answers (a Decision,
    never an exception), and each client is admitted once per window (twice at most: a
    window may end during the run)."""
    limiter = Limiter(storage_from_url(server.url, prefix="s27dc:"),
                      strategy="fixed_window", denial_cache_size=8)
    errors: list[str] = []
    admitted: list[str] = []
    stop = threading.Event()

    def hammer(offset: int) -> None:
        n = offset
        while not stop.is_set():
            key = f"c{n % 64}"
            try:
                if limiter.hit(key, "1/minute", cost=1 + n % 2 if n % 7 else 1).allowed:
                    admitted.append(key)
            except Exception:  # what a request would have raised
                errors.append(traceback.format_exc())
            n += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside the cache's methods
    try:
        threads = [threading.Thread(target=hammer, args=(i * 5,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
        limiter.storage.close()
    assert errors == [], f"{len(errors)} calls raised; the first:\n{errors[0]}"
    assert max(admitted.count(k) for k in set(admitted)) <= 2
