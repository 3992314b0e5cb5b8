"""Every algorithm, on every backend, agrees with its reference model (tests/models.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import MODELS
from test_clock_steps import known_defect
from throttlekit import Rate
from throttlekit.testing import FakeClock

START_US = 1_699_920_000_000_000

PERIODS_US = [1_000_000, 2_000_000, 60_000_000, 1_500_000, 333_333]

steps = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10), st.integers(0, 400_000), st.integers(0, 3_000_000)),
        st.integers(0, 6),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)
#: as ``steps``, the clock sometimes stepped back (NTP, a VM restored)
steps_back = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10), st.integers(0, 400_000), st.integers(0, 3_000_000),
                  st.integers(-4_000_000, -1)),
        st.integers(0, 6),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("strategy", sorted(MODELS))
@given(
    limit=st.integers(1, 8),
    period_us=st.sampled_from(PERIODS_US),
    burst=st.one_of(st.none(), st.integers(1, 12)),
    offset=st.integers(0, 5_000_000),
    seq=steps,
)
def test_matches_reference_model(make_limiter, strategy, limit, period_us, burst, offset, seq):
    """Random (time step, cost, hit-or-test) sequences give the model's exact Decisions."""
    _run(make_limiter, strategy, limit, period_us, burst, offset, seq)


@pytest.mark.parametrize("strategy", sorted(MODELS))
@given(
    limit=st.integers(1, 8),
    period_us=st.sampled_from(PERIODS_US),
    burst=st.one_of(st.none(), st.integers(1, 12)),
    offset=st.integers(0, 5_000_000),
    seq=steps_back,
)
def test_matches_reference_model_with_clock_steps_back(request, backend, make_limiter, strategy,
                                                       limit, period_us, burst, offset, seq):
    """The same with the clock sometimes stepped back: the model moves its history back
    (tests/models.py), the implementation its state (docs/algorithms.md).

    Without the local denial cache of remote stores: a test() refusal of a state still
    newer than now is decided at the state's latest instant (nothing stored moves until
    the clock passes it), while the cache counts a refusal down from when it was made: its
    retry_after and reset_after are then shorter, by at most the step."""
    known_defect(request, backend, strategy, strict=False)
    if backend.__name__.endswith("memcached") and strategy == "sliding_log":
        request.applymarker(pytest.mark.xfail(strict=False, reason=(
            "memcached writes nothing on test(): an entry a test() found slid out just "
            "before a step back to a time still after it counts again, where the model "
            "(and memory, Redis, which drop it as they read) has it gone "
            "(docs/algorithms.md, 'A clock stepped back')")))
    _run(make_limiter, strategy, limit, period_us, burst, offset, seq, denial_cache_size=0)


def _run(make_limiter, strategy, limit, period_us, burst, offset, seq, **options):
    if strategy != "token_bucket":
        burst = None
    clock = FakeClock()
    limiter = make_limiter(strategy, clock=clock, **options)
    rate = Rate(limit, period_us / 1e6)
    assert rate.period_us == period_us
    model = MODELS[strategy](limit, period_us, burst)
    now = START_US + offset
    key = "model"
    for dt, cost, consume in seq:
        now += dt
        clock.set(now / 1e6)
        t = int(clock() * 1_000_000)  # the limiter resolves time to whole microseconds
        call = limiter.hit if consume else limiter.test
        got = call(key, rate, cost=cost, burst=burst)
        want = model.step(t, cost, consume)
        assert (got.allowed, got.remaining) == (want.allowed, want.remaining), (dt, cost, consume)
        assert got.retry_after == pytest.approx(want.retry_after, abs=1e-9), (dt, cost)
        assert got.reset_after == pytest.approx(want.reset_after, abs=1e-9), (dt, cost)
        assert got.limit == (burst or limit)
