"""The optional compiled core (``THROTTLEKIT_COMPILE=1 pip install .``, docs/index.md).

CI builds that wheel and runs the core test files against it with
``THROTTLEKIT_EXPECT_COMPILED=1`` (``.ci/run``); every other run imports the sources, and
must: an extension module left in ``src/`` would shadow them for every test.
"""

from __future__ import annotations

import os

import throttlekit
from throttlekit import COMPILED, Limiter, _algorithms
from throttlekit._compiled import COMPILED_MODULES, is_compiled
from throttlekit.storage import _memory_hit

EXPECTED = os.environ.get("THROTTLEKIT_EXPECT_COMPILED") == "1"


def test_the_build_in_use_is_the_one_expected():
    """``throttlekit.COMPILED`` is true exactly when the run asked for the compiled core:
    CI's compiled phase really tests compiled code, and the ordinary suite the sources."""
    assert COMPILED is EXPECTED, [m.__file__ for m in COMPILED_MODULES]
    assert all(is_compiled(m) is EXPECTED for m in COMPILED_MODULES)
    assert throttlekit.COMPILED is COMPILED


def test_the_compiled_modules_are_the_algorithms_and_the_memory_hit():
    """What the build compiles is what ``Limiter.hit`` on the memory store goes through."""
    assert set(COMPILED_MODULES) == {_algorithms, _memory_hit}
    limiter = Limiter()
    assert limiter.hit("k", "2/second").allowed
    alg = limiter.plan("2/second").algorithms[0]
    assert type(alg).__module__ == "throttlekit._algorithms"


def test_algorithms_keep_what_other_modules_set_on_them():
    """Rules give an algorithm another storage id (``_rules``), and a calendar window makes
    a fixed window of its own period: compiled classes keep these attributes writable."""
    alg = _algorithms.make_algorithm("sliding_window", throttlekit.parse_rates("5/minute")[0])
    alg.id = "rule:sw60000000"
    alg.rerated = True
    assert (alg.id, alg.rerated) == ("rule:sw60000000", True)
    state, d = alg.hit(None, 1_000_000, 1)
    assert state is not None
    assert d.allowed and d.remaining == 4 and isinstance(d, throttlekit.Decision)
