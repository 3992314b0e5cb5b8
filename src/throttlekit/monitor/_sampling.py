"""1 request in N: which requests the monitor's expensive counting looks at.

The counters, the anomaly detectors and the heaviest clients count every request. The
request dimensions (path, user agent, ...) and the rules' keys are the expensive part, so
above :data:`SAMPLES` requests a bucket they count 1 request in ``N``: each request is
drawn independently with probability ``1/N`` (the gaps between samples are geometric,
so no periodic traffic pattern lines up with them) and counted ``N`` times. ``N`` is the
last bucket's requests // :data:`SAMPLES`, at most :data:`MAX_EVERY`, or fixed by the
user (``Monitor(sample=N)``; 1 counts every request).

Error bound: an estimate of ``c`` requests is unbiased, with a standard deviation of at
most ``sqrt(c * N)``. With at least :data:`SAMPLES` (250) samples a bucket, a value holding
a share ``s`` of a 10-bucket window is off by about ``1 / sqrt(2500 * s)`` (6% at a share
of 10%, 20% at 1%), on top of the Space-Saving sketch's own bound.
"""

from __future__ import annotations

import math
import random

from .._errors import ConfigError

__all__ = ["MAX_EVERY", "SAMPLES", "Sampler"]

#: requests a bucket whose dimensions are counted when sampling adapts to the rate
SAMPLES = 250
#: at most 1 request in this many is sampled when sampling adapts to the rate
MAX_EVERY = 64
#: gaps drawn at once (the sampled requests pop them)
DRAWS = 64


class Sampler:
    """The current ``every`` (1 in how many) and the draw of the gap to the next sample.

    Args:
        fixed: sample 1 request in ``fixed``; None adapts to the rate (:meth:`adapt`).
    """

    __slots__ = ("_fixed", "_log_q", "_random", "every", "gaps")

    def __init__(self, fixed: int | None = None) -> None:
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int)
                                  or fixed < 1):
            raise ConfigError(f"sample must be a positive integer or None, got {fixed!r}")
        self._fixed = fixed or 0
        self.every = 1
        self._log_q = -math.inf
        # seeded: a simulation run twice samples the same requests
        self._random = random.Random(0x7417).random
        #: the next gaps, drawn ahead at the current ``every`` (popped from the end)
        self.gaps: list[int] = []
        self.adapt(0)

    def adapt(self, requests: int) -> int:
        """Once per bucket, with the bucket's requests: the new ``every``."""
        every = self._fixed or max(1, min(MAX_EVERY, requests // SAMPLES))
        if every != self.every:
            self.every = every
            self._log_q = math.log1p(-1.0 / every) if every > 1 else -math.inf
            self.gaps.clear()  # drawn at the old ``every``
        return every

    def gap(self) -> int:
        """Requests until the next sample (1: the next one), geometric with mean
        ``every``: the next of :attr:`gaps` (a caller may pop it itself), drawn
        :data:`DRAWS` at a time."""
        try:
            return self.gaps.pop()
        except IndexError:  # (another thread may have popped the last one)
            pass
        if self.every == 1:
            drawn = [1] * DRAWS
        else:
            q, draw, log = self._log_q, self._random, math.log
            drawn = [1 + int(log(1.0 - draw()) / q) for _ in range(DRAWS)]
        gap = drawn.pop()
        self.gaps.extend(drawn)
        return gap
