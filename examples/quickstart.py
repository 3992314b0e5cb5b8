"""See throttlekit at work on the in-memory default: ``python examples/quickstart.py``.

Three clients hit an endpoint limited to 5 requests per second; one of them floods it.
"""

from __future__ import annotations

from throttlekit import Limiter
from throttlekit.testing import FakeClock


def main() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)  # memory://, sliding_window
    rate = "5/second"
    sent = {"alice": 0, "bob": 0, "flooder": 0}
    served = dict.fromkeys(sent, 0)
    for tick in range(100):  # 10 simulated seconds in steps of 0.1 s
        clients = ["flooder"] * 10
        if tick % 5 == 0:
            clients += ["alice", "bob"]
        for client in clients:
            sent[client] += 1
            if limiter.hit(client, rate).allowed:
                served[client] += 1
        clock.advance(0.1)
    print(f"limit {rate} per client, 10 simulated seconds")
    for client in sent:
        print(f"  {client:8s} sent {sent[client]:4d}  served {served[client]:4d}")
    d = limiter.hit("flooder", rate)
    print(f"flooder's next request: allowed={d.allowed} retry_after={d.retry_after:.4f}s")
    for strategy in ("fixed_window", "sliding_window", "sliding_log", "token_bucket"):
        decisions = [limiter.hit(f"demo-{strategy}", "3/second", strategy=strategy)
                     for _ in range(4)]
        print(f"  {strategy:15s}", " ".join("ok" if d.allowed else "429" for d in decisions))


if __name__ == "__main__":
    main()
