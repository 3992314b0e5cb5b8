"""The simulator's server model against cases small enough to compute by hand."""

from __future__ import annotations

import statistics

import pytest

from throttlekit import ConfigError
from throttlekit.cli._report import RunStats
from throttlekit.cli._server import Job, Server, ServerSpec, ServiceTime, ServiceTimes


class Watched(Job):
    """A job that remembers what the model told it."""

    __slots__ = ("ended",)

    def __init__(self, arrival: float, service: float, legitimate: bool = True) -> None:
        super().__init__(arrival, service, 0, legitimate)
        self.ended: tuple[str, float | None] | None = None

    def complete(self, latency: float) -> None:
        assert self.ended is None
        self.ended = ("complete", latency)

    def drop(self) -> None:
        assert self.ended is None
        self.ended = ("drop", None)


def replay(spec: ServerSpec, arrivals: list[tuple[float, float]], duration: float = 10.0,
           ) -> tuple[list[Watched], RunStats]:
    """Offer a job per (arrival, service time) in order, then serve what is left."""
    stats = RunStats(["g"], spec.timeout, duration, spec.workers)
    server = Server(spec, stats)
    jobs = []
    for t, service in arrivals:
        server.advance(t)
        job = Watched(t, service)
        server.offer(job, t)
        jobs.append(job)
    server.finish()
    return jobs, stats


def test_one_worker_fixed_service_time_queues_and_drops_exactly():
    """One worker, 1 s per request, one place in the queue: the first is served at once,
    the second waits for it, the third and fourth find the queue full; a later one finds
    the worker free again."""
    spec = ServerSpec(workers=1, queue=1, timeout=1.5)
    jobs, stats = replay(spec, [(0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 1.0), (2.5, 1.0)])
    assert [j.ended for j in jobs] == [
        ("complete", 1.0),
        ("complete", pytest.approx(1.9)),  # waited 0.9 s: 1.9 s > the 1.5 s timeout
        ("drop", None),
        ("drop", None),
        ("complete", 1.0),
    ]
    assert [j.started for j in jobs] == [0.0, 1.0, 0.2, 0.3, 2.5]
    # served after the client gave up: a failure for the client, though the server did it
    assert stats.legit == {"answered": 2, "late": 1, "dropped": 2}
    assert stats.share(True, "answered") == pytest.approx(0.4)
    assert stats.busy == pytest.approx(3.0) and stats.utilisation == pytest.approx(0.3)
    assert stats.timeline[0] == [4, 0, 0, 0, 1]  # 4 admitted at t=0.x, 1 answered in time
    assert stats.timeline[2] == [1, 0, 0, 0, 1]


def test_queue_is_first_in_first_out_over_two_workers():
    """Two workers, service 1 s, five requests at t=0: two start, three wait and start
    as workers come free, in their order."""
    jobs, stats = replay(ServerSpec(workers=2, timeout=10.0), [(0.0, 1.0)] * 5)
    assert [j.started for j in jobs] == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert [j.ended for j in jobs] == [("complete", x) for x in (1.0, 1.0, 2.0, 2.0, 3.0)]
    assert sorted(stats.latencies) == [1.0, 1.0, 2.0, 2.0, 3.0]
    assert stats.latency(0.5) == 2.0


def test_queue_zero_drops_whatever_finds_every_worker_busy():
    jobs, _ = replay(ServerSpec(workers=1, queue=0), [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0)])
    assert [j.ended for j in jobs] == [("complete", 1.0), ("drop", None), ("complete", 1.0)]


def test_unlimited_server_serves_everything_at_once():
    """Without a [server] section: no capacity, no waiting (today's simulate)."""
    spec = ServerSpec()
    assert spec.unlimited
    jobs, stats = replay(spec, [(0.0, 0.0)] * 100)
    assert all(j.ended == ("complete", 0.0) for j in jobs)
    assert stats.share(True, "answered") == 1.0 and stats.utilisation is None


def test_completion_ends_in_time_order_between_arrivals():
    """A request ends when the model's time passes its end, not before."""
    stats = RunStats(["g"], 5.0, 10.0, 1)
    server = Server(ServerSpec(workers=1, timeout=5.0), stats)
    job = Watched(0.0, 2.0)
    server.offer(job, 0.0)
    server.advance(1.999)
    assert job.ended is None and server.busy == 1
    server.advance(2.0)
    assert job.ended == ("complete", 2.0) and server.busy == 0


def test_busy_time_counts_within_the_run_only():
    """Utilisation: worker time within the scenario's duration over workers x duration."""
    _, stats = replay(ServerSpec(workers=2), [(8.0, 4.0), (9.0, 0.5)], duration=10.0)
    assert stats.busy == pytest.approx(2.0 + 0.5)
    assert stats.utilisation == pytest.approx(2.5 / 20)


def test_attack_and_legitimate_outcomes_are_kept_apart():
    stats = RunStats(["a", "b"], 1.0, 10.0, 1)
    server = Server(ServerSpec(workers=1, queue=0, timeout=1.0), stats)
    server.offer(Job(0.0, 0.5, 1, False), 0.0)
    server.offer(Job(0.1, 0.5, 0, True), 0.1)
    server.finish()
    assert stats.attack["answered"] == 1 and stats.legit["dropped"] == 1
    assert stats.per_group == [[1, 0], [1, 0]]


def test_service_time_by_path_longest_prefix_and_default():
    spec = ServerSpec(service=(("/search", ServiceTime(0.2, 0.2)),
                               ("/search/deep", ServiceTime(1.0, 1.0)),
                               ("*", ServiceTime(0.02, 0.02))))
    assert spec.service_time("/search").median == 0.2
    assert spec.service_time("/search/x").median == 0.2
    assert spec.service_time("/search/deep/1").median == 1.0
    assert spec.service_time("/searching").median == 0.02
    assert spec.service_time("/").median == 0.02
    assert ServerSpec().service_time("/anything").median == 0.0


def test_lognormal_service_times_have_the_median_and_p90_asked_and_are_seeded():
    spec = ServerSpec(service=(("*", ServiceTime(0.2, 0.5)),))
    draws = ServiceTimes(spec, seed=7)
    sample = sorted(draws("/x") for _ in range(20_000))
    assert statistics.median(sample) == pytest.approx(0.2, rel=0.03)
    assert sample[int(0.9 * len(sample))] == pytest.approx(0.5, rel=0.05)
    first = ServiceTimes(spec, seed=7)
    second = ServiceTimes(spec, seed=7)
    assert [first("/x") for _ in range(50)] == [second("/x") for _ in range(50)]
    assert [first("/x") for _ in range(5)] != [ServiceTimes(spec, seed=8)("/x") for _ in range(5)]
    fixed = ServiceTimes(ServerSpec(service=(("*", ServiceTime(0.05, 0.05)),)), seed=1)
    assert {fixed("/a") for _ in range(10)} == {0.05}


def test_server_section_is_read_and_checked():
    spec = ServerSpec.from_dict({
        "workers": 4, "queue": 10, "timeout": 2,
        "service": {"/search": {"median": 0.2, "p90": 0.4}, "*": 0.01},
    })
    assert (spec.workers, spec.queue, spec.timeout) == (4, 10, 2)
    assert spec.service_time("/search") == ServiceTime(0.2, 0.4)
    assert spec.service_time("/") == ServiceTime(0.01, 0.01)
    assert "4 workers, queue 10, client timeout 2 s" in spec.describe()
    assert spec.as_dict()["service"]["/search"] == {"median": 0.2, "p90": 0.4}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"workers": 0}, "workers must be a positive integer"),
        ({"workers": 2.5}, "workers must be a positive integer"),
        ({"queue": -1}, "queue must be a positive integer"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"threads": 3}, "unknown setting"),
        ({"service": {"search": 0.1}}, "not '\\*' or a path"),
        ({"service": {"/": {"median": 0.2, "p90": 0.1}}}, "p90 >= median"),
        ({"service": {"/": "fast"}}, "expected seconds"),
        ({"service": 3}, "must map paths"),
    ],
)
def test_bad_server_sections_are_config_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        ServerSpec.from_dict(table)
