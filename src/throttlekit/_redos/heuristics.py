"""The heuristics: quantifiers nested, side by side or over alternatives that share
characters, and long chains of optional items (see the package docstring)."""

from __future__ import annotations

import re

from .tree import (
    ALPHABET,
    REPEATS,
    Item,
    all_atoms,
    children,
    first_atoms,
    fixed_len,
    is_char,
    last_atoms,
    nullable_item,
    op_name,
)

__all__ = ["check_seq"]

_CATEGORIES = {
    "CATEGORY_DIGIT": re.compile(r"\d"), "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
    "CATEGORY_SPACE": re.compile(r"\s"), "CATEGORY_NOT_SPACE": re.compile(r"\S"),
    "CATEGORY_WORD": re.compile(r"\w"), "CATEGORY_NOT_WORD": re.compile(r"\W"),
}


def _repeat(item: Item) -> tuple[int, int, list[Item]] | None:
    """(min, max, body) of a backtracking quantifier, seen through plain groups."""
    op, av = item
    name = op_name(op)
    if name in REPEATS:
        return av[0], av[1], list(av[2])
    if name == "SUBPATTERN":
        body = list(av[3])
        if len(body) == 1:
            return _repeat(body[0])
    return None


def _variable(rep: tuple[int, int, list[Item]] | None) -> bool:
    return rep is not None and rep[1] >= 2 and rep[1] > rep[0]


#: optional items over the same characters allowed in one sequence (see _optional_chain)
_MAX_OPTIONAL_CHAIN = 8


def _optional_chain(seq: list[Item]) -> str | None:
    """Many optional items over shared characters in one sequence (``a?a?...a?aa...a``,
    ``[ab]?[ab]?...``): each can take a character or leave it to another, so a failing
    match tries up to ``2**n`` ways at every start: 13 s for twenty of them on 1 KiB."""
    groups: list[tuple[list[Item], int]] = []
    for item in seq:
        rep = _repeat(item)
        if rep is None or rep[0] >= rep[1]:
            continue
        atoms = all_atoms(rep[2])
        for k, (seen, n) in enumerate(groups):
            if _overlap_atoms(seen, atoms):
                if n + 1 >= _MAX_OPTIONAL_CHAIN:
                    return (f"{_MAX_OPTIONAL_CHAIN} or more optional items over the same "
                            "characters in a row, e.g. a?a?a?a?a?a?a?a?aaaaaaaa")
                groups[k] = (seen, n + 1)
                break
        else:
            groups.append((atoms, 1))
    return None


def check_seq(seq: list[Item]) -> str | None:
    why = _optional_chain(seq)
    if why:
        return why
    for i, item in enumerate(seq):
        rep = _repeat(item) if op_name(item[0]) in REPEATS else None
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
        for child in children(item):
            why = check_seq(child)
            if why:
                return why
    return None


def _ambiguous_body(body: list[Item]) -> bool:
    """Whether one repetition of ``body`` can end in several places so that the next
    repetition can start there too: a variable-length item with nothing mandatory after
    it, over characters the body can start with (``(a+)+``, ``(\\w+\\s?)+``, ``(a|aa)+``;
    not ``(\\d+\\.)+``, whose mandatory dot ends each repetition)."""
    seq = _flatten(body)
    starts = first_atoms(seq)
    for k, item in enumerate(seq):
        if op_name(item[0]) in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            continue  # matches one way only: never gives characters back
        if fixed_len([item]) is None:
            chars = all_atoms([item])
            if _overlap_atoms(chars, starts) and all(
                nullable_item(o) or _absorbed(o, chars) for o in seq[k + 1:]
            ):
                return True
    return False


def _absorbed(item: Item, chars: list[Item]) -> bool:
    """Whether ``item`` matches fixed-length text the quantifier over ``chars`` could
    match instead (so the split between them can shift)."""
    return fixed_len([item]) is not None and _overlap_atoms(all_atoms([item]), chars)


def _flatten(seq: list[Item]) -> list[Item]:
    while len(seq) == 1 and op_name(seq[0][0]) == "SUBPATTERN":
        seq = list(seq[0][1][3])
    return seq


def _overlapping_branches(body: list[Item]) -> bool:
    seq = _flatten(body)
    for op, av in seq:
        if op_name(op) != "BRANCH":
            continue
        branches = [list(b) for b in av[1]]
        seen: list[str] = []
        singles: list[list[Item]] = []
        for b in branches:
            key = repr(b)
            if key in seen:
                return True
            seen.append(key)
            if len(b) == 1 and is_char(b[0]):
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
    chars = last_atoms(first[2])  # what it can give back to the next one
    absorbed = 0
    for j in range(i + 1, len(seq)):
        rep = _repeat(seq[j])
        if rep is not None and _variable(rep) and _overlap_atoms(chars, first_atoms(rep[2])):
            return "two quantifiers in a row over the same characters, e.g. \\d+\\d+ or .*.*"
        if nullable_item(seq[j]):
            continue
        # a short fixed item between them that either could match: a.*b.*c is cubic
        absorbed += 1
        if absorbed > 2 or not _absorbed(seq[j], chars):
            return None
    return None


def _overlap(a: list[Item], b: list[Item]) -> bool:
    return _overlap_atoms(first_atoms(a), first_atoms(b))


def _overlap_atoms(a: list[Item], b: list[Item]) -> bool:
    if not a or not b:
        return False
    return any(any(_accepts(x, ch) for x in a) and any(_accepts(y, ch) for y in b)
               for ch in ALPHABET)


def _accepts(atom: Item, ch: str) -> bool:
    op, av = atom
    name = op_name(op)
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
            sname = op_name(sop)
            if sname == "NEGATE":
                negate = True
            elif sname == "LITERAL":
                hit = hit or ord(ch) == sav
            elif sname == "RANGE":
                hit = hit or sav[0] <= ord(ch) <= sav[1]
            elif sname == "CATEGORY":
                rx = _CATEGORIES.get(op_name(sav))
                hit = hit or rx is None or rx.match(ch) is not None
            else:
                hit = True  # a form not known here: assume it can
        return hit != negate
    return True
