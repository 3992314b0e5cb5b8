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

It is a heuristic: it can miss a rarer ambiguous form (``(a|aa)*``), so matching is also
bounded to :data:`MAX_REGEX_INPUT` characters (see ``_rulesfile``).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_REGEX_INPUT", "hazard"]

#: header values are searched within their first this many characters
MAX_REGEX_INPUT = 1024

if sys.version_info >= (3, 11):
    _parser: Any = importlib.import_module("re._parser")
    _MAXREPEAT: int = importlib.import_module("re._constants").MAXREPEAT
else:  # pragma: no cover - Python 3.10
    _parser = importlib.import_module("sre_parse")
    _MAXREPEAT = importlib.import_module("sre_constants").MAXREPEAT

_REPEATS = ("MAX_REPEAT", "MIN_REPEAT")  # POSSESSIVE_REPEAT never backtracks into itself
_ZERO_WIDTH = ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF", "GROUPREF_EXISTS")
_CATEGORIES = {
    "CATEGORY_DIGIT": re.compile(r"\d"), "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
    "CATEGORY_SPACE": re.compile(r"\s"), "CATEGORY_NOT_SPACE": re.compile(r"\S"),
    "CATEGORY_WORD": re.compile(r"\w"), "CATEGORY_NOT_WORD": re.compile(r"\W"),
}
#: characters tried when asking whether two character classes overlap
_ALPHABET = [chr(i) for i in range(0x250)] + ["\u0660", "\u2003", "\u4e00", "\U0001f600"]

Item = tuple[Any, Any]


def hazard(pattern: str, flags: int = 0) -> str | None:
    """Why ``pattern`` can take exponential or high polynomial time, or None."""
    try:
        tree = _parser.parse(pattern, flags)
    except Exception:  # an invalid pattern is reported by re.compile, not here
        return None
    return _check_seq(list(tree))


def _name(op: Any) -> str:
    return str(op)


def _repeat(item: Item) -> tuple[int, int, list[Item]] | None:
    """(min, max, body) of a backtracking quantifier, seen through plain groups."""
    op, av = item
    name = _name(op)
    if name in _REPEATS:
        return av[0], av[1], list(av[2])
    if name == "SUBPATTERN":
        body = list(av[3])
        if len(body) == 1:
            return _repeat(body[0])
    return None


def _variable(rep: tuple[int, int, list[Item]] | None) -> bool:
    return rep is not None and rep[1] >= 2 and rep[1] > rep[0]


def _children(item: Item) -> Iterable[list[Item]]:
    """The sub-sequences of one item."""
    op, av = item
    name = _name(op)
    if name in _REPEATS or name == "POSSESSIVE_REPEAT":
        yield list(av[2])
    elif name == "SUBPATTERN":
        yield list(av[3])
    elif name == "ATOMIC_GROUP":
        yield list(av)
    elif name == "BRANCH":
        for b in av[1]:
            yield list(b)
    elif name in ("ASSERT", "ASSERT_NOT"):
        yield list(av[1])
    elif name == "GROUPREF_EXISTS":
        for b in av[1:]:
            if b is not None:
                yield list(b)


def _check_seq(seq: list[Item]) -> str | None:
    for i, item in enumerate(seq):
        rep = _repeat(item) if _name(item[0]) in _REPEATS else None
        if rep is not None and rep[1] >= 2:
            body = rep[2]
            if _ambiguous_body(body):
                return "a quantifier inside a quantifier, e.g. (a+)+ or (.*)*"
            if _overlapping_branches(body):
                return "alternatives that match the same character under a quantifier, " \
                       "e.g. (a|a)* or (\\w|\\d)+"
        if _variable(_repeat(item)):
            why = _adjacent(seq, i)
            if why:
                return why
        for child in _children(item):
            why = _check_seq(child)
            if why:
                return why
    return None


def _ambiguous_body(body: list[Item]) -> bool:
    """Whether one repetition of ``body`` can end in several places so that the next
    repetition can start there too: a variable-length item with nothing mandatory after
    it, over characters the body can start with (``(a+)+``, ``(\\w+\\s?)+``, ``(a|aa)+``;
    not ``(\\d+\\.)+``, whose mandatory dot ends each repetition)."""
    seq = _flatten(body)
    starts = _first_atoms(seq)
    for k, item in enumerate(seq):
        if _name(item[0]) in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            continue  # matches one way only: never gives characters back
        if _fixed_len([item]) is None:
            chars = _all_atoms([item])
            if _overlap_atoms(chars, starts) and all(
                _nullable_item(o) or _absorbed(o, chars) for o in seq[k + 1:]
            ):
                return True
    return False


def _absorbed(item: Item, chars: list[Item]) -> bool:
    """Whether ``item`` matches fixed-length text the quantifier over ``chars`` could
    match instead (so the split between them can shift)."""
    return _fixed_len([item]) is not None and _overlap_atoms(_all_atoms([item]), chars)


def _fixed_len(seq: Iterable[Item]) -> int | None:
    """The length of every text ``seq`` matches, or None when it varies."""
    total = 0
    for item in seq:
        op, av = item
        name = _name(op)
        n: int | None
        if _is_char(item):
            n = 1
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            n = 0
        elif name in _REPEATS or name == "POSSESSIVE_REPEAT":
            inner = _fixed_len(av[2])
            n = None if inner is None or av[0] != av[1] else inner * av[0]
            if inner == 0:
                n = 0
        elif name == "SUBPATTERN":
            n = _fixed_len(av[3])
        elif name == "ATOMIC_GROUP":
            n = _fixed_len(av)
        elif name == "BRANCH":
            lens = {_fixed_len(b) for b in av[1]}
            n = lens.pop() if len(lens) == 1 else None
        else:
            n = None
        if n is None:
            return None
        total += n
    return total


def _flatten(seq: list[Item]) -> list[Item]:
    while len(seq) == 1 and _name(seq[0][0]) == "SUBPATTERN":
        seq = list(seq[0][1][3])
    return seq


def _overlapping_branches(body: list[Item]) -> bool:
    seq = _flatten(body)
    for op, av in seq:
        if _name(op) != "BRANCH":
            continue
        branches = [list(b) for b in av[1]]
        seen: list[str] = []
        singles: list[list[Item]] = []
        for b in branches:
            key = repr(b)
            if key in seen:
                return True
            seen.append(key)
            if len(b) == 1 and _is_char(b[0]):
                singles.append(b)
        for x in range(len(singles)):
            for y in range(x + 1, len(singles)):
                if _overlap(singles[x], singles[y]):
                    return True
    return False


def _adjacent(seq: list[Item], i: int) -> str | None:
    """A variable quantifier at ``seq[i]`` followed, past optional items only, by another
    variable quantifier over some of the same characters."""
    first = _repeat(seq[i])
    assert first is not None
    chars = _last_atoms(first[2])  # what it can give back to the next one
    absorbed = 0
    for j in range(i + 1, len(seq)):
        rep = _repeat(seq[j])
        if rep is not None and _variable(rep) and _overlap_atoms(chars, _first_atoms(rep[2])):
            return "two quantifiers in a row over the same characters, e.g. \\d+\\d+ or .*.*"
        if _nullable_item(seq[j]):
            continue
        # a short fixed item between them that either could match: a.*b.*c is cubic
        absorbed += 1
        if absorbed > 2 or not _absorbed(seq[j], chars):
            return None
    return None


def _nullable(seq: Iterable[Item]) -> bool:
    return all(_nullable_item(i) for i in seq)


def _nullable_item(item: Item) -> bool:
    op, av = item
    name = _name(op)
    if name in _ZERO_WIDTH:
        return True
    if name in _REPEATS or name == "POSSESSIVE_REPEAT":
        return bool(av[0] == 0) or _nullable(av[2])
    if name == "SUBPATTERN":
        return _nullable(av[3])
    if name == "ATOMIC_GROUP":
        return _nullable(av)
    if name == "BRANCH":
        return any(_nullable(b) for b in av[1])
    return False


def _is_char(item: Item) -> bool:
    return _name(item[0]) in ("LITERAL", "NOT_LITERAL", "ANY", "IN")


def _first_atoms(seq: Iterable[Item]) -> list[Item]:
    """The one-character items the text matched by ``seq`` can start with."""
    out: list[Item] = []
    for item in seq:
        op, av = item
        name = _name(op)
        if _is_char(item):
            out.append(item)
        elif name in _REPEATS or name == "POSSESSIVE_REPEAT":
            out.extend(_first_atoms(av[2]))
        elif name == "SUBPATTERN":
            out.extend(_first_atoms(av[3]))
        elif name == "ATOMIC_GROUP":
            out.extend(_first_atoms(av))
        elif name == "BRANCH":
            for b in av[1]:
                out.extend(_first_atoms(b))
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        if not _nullable_item(item):
            break
    return out


def _last_atoms(seq: list[Item]) -> list[Item]:
    """The one-character items the text matched by ``seq`` can end with."""
    out: list[Item] = []
    for item in reversed(seq):
        name = _name(item[0])
        if _is_char(item):
            out.append(item)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        else:
            for child in _children(item):
                if name not in ("ASSERT", "ASSERT_NOT"):
                    out.extend(_last_atoms(child))
        if not _nullable_item(item):
            break
    return out


def _all_atoms(seq: Iterable[Item]) -> list[Item]:
    out: list[Item] = []
    for item in seq:
        if _is_char(item):
            out.append(item)
        elif _name(item[0]) in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        else:
            for child in _children(item):
                out.extend(_all_atoms(child))
    return out


def _overlap(a: list[Item], b: list[Item]) -> bool:
    return _overlap_atoms(_first_atoms(a), _first_atoms(b))


def _overlap_atoms(a: list[Item], b: list[Item]) -> bool:
    if not a or not b:
        return False
    return any(any(_accepts(x, ch) for x in a) and any(_accepts(y, ch) for y in b)
               for ch in _ALPHABET)


def _accepts(atom: Item, ch: str) -> bool:
    op, av = atom
    name = _name(op)
    if name == "LITERAL":
        return bool(ord(ch) == av)
    if name == "NOT_LITERAL":
        return bool(ord(ch) != av)
    if name == "ANY":
        return True
    if name == "IN":
        negate = False
        hit = False
        for sop, sav in av:
            sname = _name(sop)
            if sname == "NEGATE":
                negate = True
            elif sname == "LITERAL":
                hit = hit or ord(ch) == sav
            elif sname == "RANGE":
                hit = hit or sav[0] <= ord(ch) <= sav[1]
            elif sname == "CATEGORY":
                rx = _CATEGORIES.get(_name(sav))
                hit = hit or rx is None or rx.match(ch) is not None
            else:
                hit = True  # a form not known here: assume it can
        return hit != negate
    return True
