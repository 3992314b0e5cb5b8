"""Regular expressions that can backtrack for seconds on a short input (ReDoS).

Python's ``re`` backtracks: ``(a+)+$`` tries every way of splitting a run of ``a`` between
the two quantifiers, so a 28-byte ``aaaaaaaaaaaaaaaaaaaaaaaaaaa!`` takes many seconds. A
rules file is reviewed by operators, not always by someone who knows this, so its header
regexes are checked when the file loads: :func:`hazard` names the constructions that cause
exponential or high polynomial time, and the file is refused with the line.

It works on the parse tree ``re`` builds (``re._parser``; ``sre_parse`` before 3.11) and
flags, for any quantifier that repeats (max >= 2) and is not possessive:

- a quantifier inside it that can match text of several lengths, with nothing mandatory
  beside it (``(a+)+``, ``(.*)*``, ``(\\w+\\s?)+``, ``(a*b*)*``, ``(a+|b)+``);
- alternatives of one character each that can match the same character (``(a|a)*``,
  ``(\\w|\\d)+``, ``(.|\\s)*``), or identical alternatives;
- two such quantifiers in a row over the same characters with only optional items, or at
  most two short items either could match, between them (``\\d+\\d+``, ``.*.*=``,
  ``\\w+\\s?\\w+$``, ``a.*b.*c``): cubic time or worse on a search.

Those are heuristics (:mod:`.heuristics`). The exponential class is then decided soundly
(:mod:`.loops`): a loop in which the same text can be matched along two paths
(``(?:bot|.ot)+``, ``(?:(a)|a)+``, ``(?:a(?=a)|a)+``), and a large or unbounded repeat of a
body that can match nothing. Polynomial forms beyond the ones above can still pass, so
matching is also bounded to :data:`MAX_REGEX_INPUT` characters (see ``_rulesfile``). Both
read the parse tree through :mod:`.tree`.
"""

from __future__ import annotations

from .heuristics import check_seq
from .loops import check_loops
from .tree import parse

__all__ = ["MAX_REGEX_INPUT", "hazard"]

#: header values are searched within their first this many characters
MAX_REGEX_INPUT = 1024


def hazard(pattern: str, flags: int = 0) -> str | None:
    """Why ``pattern`` can take exponential or high polynomial time, or None."""
    try:
        tree = parse(pattern, flags)
    except Exception:  # an invalid pattern is reported by re.compile, not here
        return None
    return check_seq(list(tree)) or check_loops(list(tree), tree.state.flags)
