"""Hypothesis depth that follows the loaded profile (fast, ci, dev: ../conftest.py).

A test that needs more examples than the profile gives says how many it wants in the full
suite, ``@settings(max_examples=examples(600))``, and gets that many under the ``ci`` profile
(``python -m pytest --full``, what .ci/run runs), proportionally fewer under ``fast`` (the
default ``python -m pytest``) and more under ``dev``. A fixed ``max_examples`` would override
the profile, so the fast suite would pay the full suite's depth.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis.errors import InvalidArgument

__all__ = ["examples"]


def examples(full: int) -> int:
    """``full`` examples scaled by the loaded profile's ``max_examples`` against ``ci``'s
    (read when the test module is imported, after conftest.py loaded the profile)."""
    try:
        ci = settings.get_profile("ci").max_examples
    except InvalidArgument:  # no profiles registered: not under pytest
        return full
    return max(1, round(full * settings.default.max_examples / ci))
