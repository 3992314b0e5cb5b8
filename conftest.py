"""Which tests a run selects: the fast suite by default, everything with ``--full``.

``python -m pytest`` runs the fast suite: every backend and every feature, without the tests
marked ``slow``, ``e2e``, ``cluster``, ``sentinel`` or ``browser`` and without the benchmark
files, with a small hypothesis profile. The README's command, ``python -m pytest -n 2``
(pytest-xdist; tests/servers.py gives each worker test ports of its own), is meant to take
two minutes or less on a 2-core machine, servers included.

``python -m pytest --full`` runs everything (what ``.ci/run`` runs): those tests too, the
``ci`` hypothesis profile, and the benchmark files as a smoke pass that still asserts their
ratio targets at a loose bound (benchmarks/conftest.py).

An explicit ``-m`` expression replaces the default selection (``-m slow`` runs the slow
tests); a file or test named on the command line always runs, marks or not; and naming
``benchmarks`` (or passing ``--benchmark-enable``) runs the benchmark files.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

#: Marks of the tests the fast suite leaves out (each declared in pyproject.toml).
FULL_ONLY = ("slow", "e2e", "cluster", "sentinel", "browser", "bench")

# make_limiter builds a fresh storage on every call, so reusing the fixture across
# hypothesis examples is safe. The fast profile's 10 examples a property find what a
# regression breaks wholesale; --full (ci, 60) and dev (300) search deeper. Tests that ask
# for more scale with the profile: tests/profiles.py.
_suppress = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("fast", max_examples=10, deadline=None, suppress_health_check=_suppress)
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=_suppress)
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=_suppress)

_BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true", default=False,
        help="run the whole suite: also the tests marked " + ", ".join(FULL_ONLY)
        + " and the benchmarks' ratio assertions at a loose bound (what .ci/run runs)",
    )


def full_run(config: pytest.Config) -> bool:
    """Whether this run is the full suite (``--full``)."""
    return bool(config.getoption("full"))


def pytest_configure(config: pytest.Config) -> None:
    default = "ci" if full_run(config) else "fast"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", default))


def pytest_report_header(config: pytest.Config) -> str:
    if full_run(config):
        return "throttlekit: the full suite (--full)"
    if config.getoption("markexpr"):
        return "throttlekit: tests selected by -m"
    return (f"throttlekit: the fast suite (without {', '.join(FULL_ONLY)}; "
            "python -m pytest --full runs everything)")


def _named(config: pytest.Config) -> list[Path]:
    """Files and directories named on the command line (not the configured testpaths)."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return []
    root = Path(config.invocation_params.dir)
    return [(root / arg.split("::", 1)[0]).resolve() for arg in config.args]


def _runs(item: pytest.Item, named: list[Path], benchmarks_asked: bool) -> bool:
    """Whether the fast suite runs ``item``: it has none of the FULL_ONLY marks, or its file
    was named on the command line; a benchmark also runs when the benchmarks directory was
    named or benchmarks are measured (``--benchmark-enable``)."""
    marks = {m for m in FULL_ONLY if item.get_closest_marker(m) is not None}
    if not marks or item.path in named:
        return True
    if marks == {"bench"}:
        return benchmarks_asked or any(item.path.is_relative_to(p) for p in named)
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # the benchmark files carry the "bench" mark, whatever else they have
        if item.path.is_relative_to(_BENCHMARKS):
            item.add_marker(pytest.mark.bench)
    if full_run(config) or config.getoption("markexpr"):
        return
    named = _named(config)
    benchmarks_asked = bool(config.getoption("benchmark_enable"))
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (keep if _runs(item, named, benchmarks_asked) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


_module_seen: list[Path | None] = [None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before each test file: collect the garbage, then ``gc.freeze()`` what is left alive.

    Later collections (the automatic ones and the tests' own ``gc.collect()``) then scan only
    the objects made since, not the whole heap of the modules, frameworks and fixtures loaded
    so far (late in the suite a full collection cost ~0.4 s of CPU, and test_no_cycle makes
    two per test). Objects frozen while alive are never freed by the collector if they end in
    a cycle later: in a test session, at most a few objects of a session-long fixture.
    """
    if item.path != _module_seen[0]:
        _module_seen[0] = item.path
        gc.collect()
        gc.freeze()
