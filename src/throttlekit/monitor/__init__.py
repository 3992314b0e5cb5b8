"""Live monitoring: counters, heavy hitters, anomaly detection, shield mode and exporters.

>>> from throttlekit.monitor import WindowedTopK
>>> top = WindowedTopK(window=10, bucket=1, capacity=4)
>>> for i, key in enumerate("aababcaaab"):
...     top.add(key, now=1000.0 + i / 10)
>>> top.top(2)
[('a', 6), ('b', 3)]

Nothing here is imported by ``import throttlekit``; ``prometheus_client`` is imported only by
:mod:`throttlekit.monitor.prometheus`, and ``opentelemetry`` only by
:mod:`throttlekit.monitor.otel`, when used.
"""

from __future__ import annotations

from ._containment import Containment
from ._metrics import NearLimit
from ._monitor import REFUSED, Anomaly, Monitor
from .attribution import Attribution, Culprit, Explanation
from .detector import RateDetector
from .dimensions import DIMENSIONS, Dimension, ValueRate
from .shield import Shield
from .sketch import SpaceSaving, WindowedTopK

__all__ = [
    "DIMENSIONS",
    "REFUSED",
    "Anomaly",
    "Attribution",
    "Containment",
    "Culprit",
    "Dimension",
    "Explanation",
    "Monitor",
    "NearLimit",
    "RateDetector",
    "Shield",
    "SpaceSaving",
    "ValueRate",
    "WindowedTopK",
]
