"""Live monitoring: counters, heavy hitters, anomaly detection, shield mode and exporters.

>>> from throttlekit.monitor import WindowedTopK
>>> top = WindowedTopK(window=10, bucket=1, capacity=4)
>>> for i, key in enumerate("aababcaaab"):
...     top.add(key, now=1000.0 + i / 10)
>>> top.top(2)
[('a', 6), ('b', 3)]

Nothing here is imported by ``import throttlekit``; ``prometheus_client`` is imported only by
:mod:`throttlekit.monitor.prometheus`, when used.
"""

from __future__ import annotations

from ._monitor import REFUSED, Anomaly, Monitor
from .detector import RateDetector
from .shield import Shield
from .sketch import SpaceSaving, WindowedTopK

__all__ = [
    "REFUSED",
    "Anomaly",
    "Monitor",
    "RateDetector",
    "Shield",
    "SpaceSaving",
    "WindowedTopK",
]
