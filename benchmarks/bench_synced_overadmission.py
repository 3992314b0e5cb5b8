"""Over-admission with a short period: workers hammer one key on Redis; the most admitted in
any sliding `period` (from the admitted requests' timestamps) against the limit."""
import bisect, multiprocessing, sys, time, uuid
from throttlekit import Limiter, Rate, storage_from_url
from throttlekit.storage.synced import SyncedStorage

def worker(prefix, strategy, limit, period, secs, ready, out):
    base = storage_from_url("redis://127.0.0.1:6379/0", prefix=prefix)
    lim = Limiter(base if len(sys.argv) > 5 else SyncedStorage(base), strategy=strategy, on_storage_error="deny")
    rate = Rate(limit, period); lim.test("w", rate); ready.wait()
    end = time.time() + secs; ts = []
    while (t := time.time()) < end:
        if lim.hit("hot", rate).allowed: ts.append(t)
    out.put(ts)

if __name__ == "__main__":
    procs, strategy, limit, period = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ctx = multiprocessing.get_context("spawn"); ready, out = ctx.Barrier(procs), ctx.Queue()
    prefix = f"tk-k-ov:{uuid.uuid4().hex[:8]}:"
    ps = [ctx.Process(target=worker, args=(prefix, strategy, limit, period, 4.0, ready, out)) for _ in range(procs)]
    [p.start() for p in ps]; ts = sorted(t for _ in ps for t in out.get(timeout=120)); [p.join() for p in ps]
    worst = max(bisect.bisect_left(ts, t + period) - i for i, t in enumerate(ts))
    print(("plain " if len(sys.argv) > 5 else "synced ") + f"{procs} workers {strategy} {limit}/{period}s: most in any {period}s window {worst} ({(worst/limit-1)*100:+.1f}%), total {len(ts)} in 4 s")
