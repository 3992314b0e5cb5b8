"""Reading the parse tree ``re`` builds (``re._parser``; ``sre_parse`` before 3.11): what
kind an item is, its sub-sequences, the lengths and characters it can match. Shared by the
heuristics (:mod:`.heuristics`) and the automaton (:mod:`.loops`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ALPHABET", "MAXREPEAT", "REPEATS", "ZERO_WIDTH", "Item", "all_atoms", "children",
    "first_atoms", "fixed_len", "is_char", "last_atoms", "nullable", "nullable_item",
    "op_name", "parse",
]

if sys.version_info >= (3, 11):
    _parser: Any = importlib.import_module("re._parser")
    MAXREPEAT: int = importlib.import_module("re._constants").MAXREPEAT
else:  # pragma: no cover - Python 3.10
    _parser = importlib.import_module("sre_parse")
    MAXREPEAT = importlib.import_module("sre_constants").MAXREPEAT

REPEATS = ("MAX_REPEAT", "MIN_REPEAT")  # POSSESSIVE_REPEAT never backtracks into itself
ZERO_WIDTH = ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF", "GROUPREF_EXISTS")
#: characters tried when asking whether two character classes overlap
ALPHABET = [chr(i) for i in range(0x250)] + ["\u0660", "\u2003", "\u4e00", "\U0001f600"]

Item = tuple[Any, Any]


def parse(pattern: str, flags: int = 0) -> Any:
    """The parse tree of ``pattern`` (raises what ``re`` raises for an invalid one)."""
    return _parser.parse(pattern, flags)


def op_name(op: Any) -> str:
    return str(op)


def children(item: Item) -> Iterable[list[Item]]:
    """The sub-sequences of one item."""
    op, av = item
    name = op_name(op)
    if name in REPEATS or name == "POSSESSIVE_REPEAT":
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


def fixed_len(seq: Iterable[Item]) -> int | None:
    """The length of every text ``seq`` matches, or None when it varies."""
    total = 0
    for item in seq:
        op, av = item
        name = op_name(op)
        n: int | None
        if is_char(item):
            n = 1
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            n = 0
        elif name in REPEATS or name == "POSSESSIVE_REPEAT":
            inner = fixed_len(av[2])
            n = None if inner is None or av[0] != av[1] else inner * av[0]
            if inner == 0:
                n = 0
        elif name == "SUBPATTERN":
            n = fixed_len(av[3])
        elif name == "ATOMIC_GROUP":
            n = fixed_len(av)
        elif name == "BRANCH":
            lens = {fixed_len(b) for b in av[1]}
            n = lens.pop() if len(lens) == 1 else None
        else:
            n = None
        if n is None:
            return None
        total += n
    return total


def nullable(seq: Iterable[Item]) -> bool:
    return all(nullable_item(i) for i in seq)


def nullable_item(item: Item) -> bool:
    op, av = item
    name = op_name(op)
    if name in ZERO_WIDTH:
        return True
    if name in REPEATS or name == "POSSESSIVE_REPEAT":
        return bool(av[0] == 0) or nullable(av[2])
    if name == "SUBPATTERN":
        return nullable(av[3])
    if name == "ATOMIC_GROUP":
        return nullable(av)
    if name == "BRANCH":
        return any(nullable(b) for b in av[1])
    return False


def is_char(item: Item) -> bool:
    return op_name(item[0]) in ("LITERAL", "NOT_LITERAL", "ANY", "IN")


def first_atoms(seq: Iterable[Item]) -> list[Item]:
    """The one-character items the text matched by ``seq`` can start with."""
    out: list[Item] = []
    for item in seq:
        op, av = item
        name = op_name(op)
        if is_char(item):
            out.append(item)
        elif name in REPEATS or name == "POSSESSIVE_REPEAT":
            out.extend(first_atoms(av[2]))
        elif name == "SUBPATTERN":
            out.extend(first_atoms(av[3]))
        elif name == "ATOMIC_GROUP":
            out.extend(first_atoms(av))
        elif name == "BRANCH":
            for b in av[1]:
                out.extend(first_atoms(b))
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        if not nullable_item(item):
            break
    return out


def last_atoms(seq: list[Item]) -> list[Item]:
    """The one-character items the text matched by ``seq`` can end with."""
    out: list[Item] = []
    for item in reversed(seq):
        name = op_name(item[0])
        if is_char(item):
            out.append(item)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        else:
            for child in children(item):
                if name not in ("ASSERT", "ASSERT_NOT"):
                    out.extend(last_atoms(child))
        if not nullable_item(item):
            break
    return out


def all_atoms(seq: Iterable[Item]) -> list[Item]:
    out: list[Item] = []
    for item in seq:
        if is_char(item):
            out.append(item)
        elif op_name(item[0]) in ("GROUPREF", "GROUPREF_EXISTS"):
            out.append(("ANY", None))
        else:
            for child in children(item):
                out.extend(all_atoms(child))
    return out
