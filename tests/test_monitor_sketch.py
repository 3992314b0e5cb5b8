"""Heavy hitters: exact top-k on skewed streams, bounded memory, sliding window."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ConfigError
from throttlekit.monitor import SpaceSaving, WindowedTopK


def _skewed_stream(n_keys: int, seed: int) -> list[int]:
    """Every key once, plus a Zipf-like (s=1.2) head: key r appears 100000 / r**1.2 more times."""
    stream = list(range(n_keys))
    r = 1
    while (extra := int(100_000 / r**1.2)) > 0:
        stream.extend([r] * extra)
        r += 1
    random.Random(seed).shuffle(stream)
    return stream


@pytest.mark.slow
def test_space_saving_finds_exact_top10_among_a_million_keys():
    """1,000,000 distinct keys, skewed: the true top-10 set is found with 512 slots at most."""
    stream = _skewed_stream(1_000_000, seed=7)
    truth = Counter(stream).most_common(11)
    assert truth[9][1] > truth[10][1]  # the top-10 is well defined
    sketch = SpaceSaving(capacity=256)
    biggest = 0
    for i, key in enumerate(stream):
        sketch.add(key)
        if i % 4096 == 0:
            biggest = max(biggest, len(sketch))
    assert {k for k, _ in sketch.top(10)} == {k for k, _ in truth[:10]}
    assert max(biggest, len(sketch)) <= 512
    assert sketch.total == len(stream)
    # estimates never under-count and over-count by at most the floor
    for key, est in sketch.top(10):
        true = Counter({k: c for k, c in truth})[key]
        assert true <= est <= true + sketch.floor


@pytest.mark.slow
def test_windowed_top_k_stays_bounded_with_a_million_keys_over_time():
    """A million distinct keys spread over a minute never hold more than buckets*2*capacity keys."""
    top = WindowedTopK(window=10, bucket=1, capacity=64)
    rng = random.Random(3)
    now = 1_700_000_000.0
    peak = 0
    for i in range(1_000_000):
        top.add(i, now + i * 60 / 1_000_000)
        if i % 5 == 0:
            top.add("heavy", now + i * 60 / 1_000_000)
        if rng.random() < 0.05:
            top.add("medium", now + i * 60 / 1_000_000)
        if i % 10_000 == 0:
            peak = max(peak, top.size())
    assert peak <= (top.nbuckets + 1) * 2 * 64
    assert [k for k, _ in top.top(2)] == ["heavy", "medium"]


def test_window_forgets_old_buckets():
    """Counts older than the window drop out of queries; the total is exact within it."""
    top = WindowedTopK(window=5, bucket=1, capacity=8)
    for i in range(50):
        top.add("old", 100.0 + i / 50)
    for i in range(10):
        top.add("new", 110.0 + i / 10)
    assert top.top(5, now=110.5) == [("new", 10)]
    assert top.total(now=110.5) == 10
    assert top.top(5, now=101.0) == [("old", 50)]


def test_since_restricts_the_window():
    """`since` counts only the buckets from that time on."""
    top = WindowedTopK(window=10, bucket=1, capacity=8)
    top.add("a", 100.2)
    top.add("a", 103.2)
    top.add("b", 103.4)
    assert dict(top.merged(now=104.0, since=103.0)) == {"a": 1, "b": 1}
    assert dict(top.merged(now=104.0)) == {"a": 2, "b": 1}


@given(st.lists(st.integers(0, 40), min_size=1, max_size=400), st.integers(1, 8))
def test_space_saving_never_undercounts(stream, capacity):
    """For any stream: every tracked estimate is >= the true count and <= true + floor."""
    sketch = SpaceSaving(capacity)
    for k in stream:
        sketch.add(k)
    truth = Counter(stream)
    assert len(sketch) <= 2 * capacity
    for k, est in sketch.counts.items():
        assert truth[k] <= est <= truth[k] + sketch.floor
    # anything above total / capacity is tracked
    for k, c in truth.items():
        if c > len(stream) / capacity:
            assert k in sketch.counts


@pytest.mark.parametrize(
    "kwargs", [{"capacity": 0}, {"window": 0}, {"bucket": -1}, {"window": 1, "bucket": 2}]
)
def test_bad_configuration_is_a_config_error(kwargs):
    """Non-positive sizes or a bucket longer than the window raise ConfigError."""
    with pytest.raises(ConfigError):
        WindowedTopK(**kwargs)


def test_monitor_package_docstring_example_runs():
    """The example in throttlekit.monitor's docstring is correct."""
    import doctest

    import throttlekit.monitor

    result = doctest.testmod(throttlekit.monitor)
    assert result.failed == 0 and result.attempted > 0


def test_monitor_and_cli_import_no_optional_library():
    """Importing the monitor, the CLI and the simulator pulls in neither prometheus_client
    nor matplotlib, and starts no thread."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import throttlekit

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(throttlekit.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
    )
    code = (
        "import sys, threading; import throttlekit.monitor, throttlekit.cli.simulate, "
        "throttlekit.monitor.status, throttlekit.monitor.prometheus; "
        "bad = [m for m in ('prometheus_client', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad; assert threading.active_count() == 1; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "ok"


@given(st.lists(st.lists(st.integers(0, 30), max_size=40), min_size=1, max_size=30),
       st.integers(1, 6), st.integers(0, 3))
def test_pending_keys_count_as_adds_one_by_one(chunks, capacity, step):
    """Keys appended to ``pending`` (what the Monitor does per request) and folded on the
    next read or roll give the same counts, floors and totals as ``add`` one by one, cuts
    included; time moves ``step`` buckets between chunks."""
    deferred, direct = WindowedTopK(4, 1, capacity), WindowedTopK(4, 1, capacity)
    now = 100.0
    for chunk in chunks:
        now += step
        deferred.current(now)  # the caller keeps the time moving (the monitor's tick)
        direct.current(now)
        for key in chunk:
            deferred.pending.append(key)
            direct.add(key, now)
        if step == 2:  # a read in the middle of a bucket folds too
            assert deferred.merged(now) == direct.merged(now)
    assert deferred.merged(now) == direct.merged(now)
    assert deferred.error(now) == direct.error(now)
    assert deferred.total(now) == direct.total(now)
    assert deferred.pending == []
    assert [(s, c.counts, c.floor) for s, c in deferred.closed(0, now + 1)] == [
        (s, c.counts, c.floor) for s, c in direct.closed(0, now + 1)]


@given(st.lists(st.tuples(st.lists(st.integers(0, 30), max_size=40), st.integers(1, 5)),
                min_size=1, max_size=30),
       st.integers(1, 6), st.integers(0, 2))
def test_weighted_pending_keys_count_as_adds_one_by_one(chunks, capacity, step):
    """Pending keys counted ``weight`` times each (the monitor's sampled dimensions: a
    sample stands for N requests) fold to the same counts, floors and totals as
    ``add(key, now, weight)`` one by one, cuts included, the weight changing between
    chunks."""
    deferred, direct = WindowedTopK(4, 1, capacity), WindowedTopK(4, 1, capacity)
    now = 100.0
    for chunk, weight in chunks:
        now += step
        deferred.current(now)
        direct.current(now)
        deferred.reweigh(weight)
        for key in chunk:
            deferred.pending.append(key)
            direct.add(key, now, weight)
    assert deferred.merged(now) == direct.merged(now)
    assert deferred.error(now) == direct.error(now)
    assert deferred.total(now) == direct.total(now)
    assert [(s, c.counts, c.floor) for s, c in deferred.closed(0, now + 1)] == [
        (s, c.counts, c.floor) for s, c in direct.closed(0, now + 1)]
