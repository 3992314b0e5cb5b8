"""The ``RateLimit`` field of several policies: negative numbers, and names that hold ``=-``
(the field is searched for ``=-`` to find a negative number)."""

from __future__ import annotations

import pytest

from throttlekit import Decision, Rate
from throttlekit._responses import rate_limit_headers

RATE = Rate(10, 60.0)


def _policies(names: list[str], rems: list[int], resets: list[float]
              ) -> list[tuple[str, Decision]]:
    return [(n, Decision(True, 10, rem, reset, 0.0, RATE))
            for n, rem, reset in zip(names, rems, resets, strict=True)]


@pytest.mark.parametrize(("names", "rems", "resets", "field"), [
    pytest.param(["a", "b"], [3, -2], [5.0, 5.0], '"a";r=3;t=5, "b";r=0;t=5',
                 id="negative-remaining-is-0"),
    pytest.param(["a", "b"], [3, 4], [5.0, -2.5], '"a";r=3;t=5, "b";r=4;t=0',
                 id="negative-reset-is-0"),
    pytest.param(["x=-1", "y"], [3, 4], [5.0, 6.0], '"x=-1";r=3;t=5, "y";r=4;t=6',
                 id="name-with-equals-minus"),
    pytest.param(["x=-1", "y"], [-3, 4], [5.0, -6.0], '"x=-1";r=0;t=5, "y";r=4;t=0',
                 id="name-with-equals-minus-and-negatives"),
    pytest.param(["a", "b"], [0, 7], [0.0, 1e-9], '"a";r=0;t=0, "b";r=7;t=1',
                 id="zero-and-tiny"),
])
def test_several_policies_write_negative_numbers_as_0(
    names: list[str], rems: list[int], resets: list[float], field: str,
) -> None:
    """With several policies a negative remaining or reset is written 0, whatever the
    names hold, on the first response and on the next (the fields cached)."""
    for _ in range(2):
        out = rate_limit_headers(_policies(names, rems, resets), "draft10")
        assert out[1] == ("RateLimit", field)
        assert out[0][0] == "RateLimit-Policy"
