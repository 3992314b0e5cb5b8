"""See throttlekit at work on the in-memory default: ``python examples/quickstart.py``.

Three clients hit an endpoint limited to 5 requests per second; one of them floods it.
"""

from __future__ import annotations

from throttlekit import Limiter
from throttlekit.testing import FakeClock


def main() -> None:
    clock = FakeClock()
    start = clock()
    limiter = Limiter(clock=clock)  # memory://, fixed_window
    rate = "5/second"
    sent = {"alice": 0, "bob": 0, "flooder": 0}
    served = dict.fromkeys(sent, 0)
    refused = None
    for tick in range(100):  # 10 simulated seconds in steps of 0.1 s
        clock.set(start + tick / 10)  # (set, not advance: 100 x 0.1 is not exactly 10.0)
        clients = ["flooder"] * 10
        if tick % 5 == 0:
            clients += ["alice", "bob"]
        for client in clients:
            sent[client] += 1
            d = limiter.hit(client, rate)
            if d.allowed:
                served[client] += 1
            elif refused is None and tick >= 52:
                refused = d  # t=5.2 s: the flooder has spent this second's 5 requests
    print(f"limit {rate} per client, 10 simulated seconds")
    for client in sent:
        print(f"  {client:8s} sent {sent[client]:4d}  served {served[client]:4d}")
    assert refused is not None
    print(f"the flooder at t=5.2s: allowed={refused.allowed} "
          f"retry_after={refused.retry_after:.1f}s (the next second's window)")
    for strategy in ("fixed_window", "sliding_window", "sliding_log", "token_bucket"):
        decisions = [limiter.hit(f"demo-{strategy}", "3/second", strategy=strategy)
                     for _ in range(4)]
        print(f"  {strategy:15s}", " ".join("ok" if d.allowed else "429" for d in decisions))


if __name__ == "__main__":
    main()
