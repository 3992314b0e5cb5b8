"""Community blocklists (CrowdSec decisions, plain lists of addresses and networks) from a
file or a URL, refreshed periodically; see :class:`Blocklist` and ``docs/rules.md``.

>>> from throttlekit.blocklists import parse_list
>>> len(parse_list("203.0.113.0/24  # a comment\\n192.0.2.7 ; another\\n"))
2
"""

from __future__ import annotations

from ._blocklists import FORMATS, Blocklist, LoadError, parse_list

__all__ = ["FORMATS", "Blocklist", "LoadError", "parse_list"]

Blocklist.__module__ = __name__
