"""Over-admission of SyncedStorage with a short period, against the same store unwrapped.

N worker processes hammer one key on the machine's Redis (own prefix, never flushed) for
4 s, starting together at a barrier; the admitted requests' timestamps are merged and the
report gives the most admitted in any sliding ``period`` and the total. Run::

    PYTHONPATH=src python benchmarks/bench_synced_overadmission.py 4 sliding_log 500 1
    PYTHONPATH=src python benchmarks/bench_synced_overadmission.py 4 sliding_log 500 1 plain

(``plain``: without SyncedStorage, the reference.) Results: docs/backends.md.
"""

from __future__ import annotations

import bisect
import multiprocessing
import sys
import time
import uuid
from typing import Any

from throttlekit import Limiter, Rate, storage_from_url
from throttlekit.storage.synced import SyncedStorage

SECONDS = 4.0


def worker(prefix: str, strategy: str, limit: int, period: float, plain: bool,
           ready: Any, out: Any) -> None:
    base = storage_from_url("redis://127.0.0.1:6379/0", prefix=prefix)
    lim = Limiter(base if plain else SyncedStorage(base), strategy=strategy,
                  on_storage_error="deny")
    rate = Rate(limit, period)
    lim.test("warm-up", rate)
    ready.wait()
    end = time.time() + SECONDS
    stamps = []
    while (t := time.time()) < end:
        if lim.hit("hot", rate).allowed:
            stamps.append(t)
    out.put(stamps)


def main(argv: list[str]) -> None:
    procs, strategy, limit, period = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    plain = len(argv) > 4 and argv[4] == "plain"
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(procs), ctx.Queue()
    prefix = f"tk-bench-overadmission:{uuid.uuid4().hex[:8]}:"
    ps = [ctx.Process(target=worker, args=(prefix, strategy, limit, period, plain, ready, out))
          for _ in range(procs)]
    for p in ps:
        p.start()
    stamps = sorted(t for _ in ps for t in out.get(timeout=120))
    for p in ps:
        p.join()
    worst = max(bisect.bisect_left(stamps, t + period) - i for i, t in enumerate(stamps))
    print(f"{'plain' if plain else 'synced'} {procs} workers {strategy} {limit}/{period:g}s: "
          f"most in any {period:g} s {worst} ({(worst / limit - 1) * 100:+.1f}%), "
          f"total {len(stamps)} in {SECONDS:g} s")


if __name__ == "__main__":
    main(sys.argv[1:])
