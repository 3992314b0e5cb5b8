"""The exponential class, decided soundly on a position automaton.

A backtracking matcher takes exponential time on some input exactly when, inside a loop,
the same text can be matched along two different paths (then each pass round the loop
doubles the paths tried before a failing suffix is reported). That is decided on an
automaton whose paths are the matcher's paths: a position automaton (Glushkov) built on
the parse tree ``re`` compiles, keeping how many ways each step can be taken (``(a+)+``
has two ways from ``a`` back to ``a``, ``(?:|x?)`` two ways to match nothing). There is
an exponential blow-up iff, in the product of that automaton with itself, some strongly
connected part holds a pair (p, p) and a pair of different steps (Weber & Seidl's EDA
criterion). Abstractions, all conservative (they only add paths): every repeat with
max >= 2 is a loop, lookarounds match nothing (their bodies are checked on their own),
``.`` matches any character, a backreference any text. Atomic groups, possessive repeats
and backreferences match one way from where they start: a pair of paths that enter one
together leaves it together. A repeated body that can match the empty string is refused
under a large or unbounded repeat (``(a?){30}``, ``(a|)+``): ``re`` cuts empty passes,
which the automaton does not model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .tree import (
    ALPHABET,
    MAXREPEAT,
    REPEATS,
    ZERO_WIDTH,
    Item,
    all_atoms,
    children,
    fixed_len,
    is_char,
    nullable,
    op_name,
)

__all__ = ["check_loops"]


#: a repeat up to this many times with a body that can match nothing is still accepted
_LARGE_REPEAT = 10
#: small repeats are written out while the automaton stays under this many positions
_UNROLL = 2000
#: product-automaton steps examined before a pattern counts as too complex to check
_BUDGET = 400_000

_CLASS_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W",
}
_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.UNICODE


class _TooComplex(Exception):
    pass


class _Auto:
    """A position automaton: each position reads one character (or, when ``opaque``, a
    run of text matched one way only: an atomic group, a possessive repeat, a
    backreference)."""

    def __init__(self) -> None:
        self.atoms: list[tuple[str, int]] = []  # (character-class regex, flags)
        self.opaque: list[bool] = []
        #: (src, dst) -> [plain ways, ways that stay inside an opaque position]
        self.edges: dict[tuple[int, int], list[int]] = {}

    def add(self, rx: str, flags: int, opaque: bool = False) -> int:
        self.atoms.append((rx, flags & _CHAR_FLAGS))
        self.opaque.append(opaque)
        return len(self.atoms) - 1

    def link(self, last: dict[int, int], first: dict[int, int], stay: bool = False) -> None:
        for p, m in last.items():
            for q, n in first.items():
                ways = self.edges.setdefault((p, q), [0, 0])
                ways[1 if stay else 0] += m * n


# (first positions with ways, last positions with ways, ways to match the empty string)
_Frag = tuple[dict[int, int], dict[int, int], int]


def _sum(a: dict[int, int], b: dict[int, int], k: int = 1) -> dict[int, int]:
    out = dict(a)
    if k:
        for p, m in b.items():
            out[p] = out.get(p, 0) + m * k
    return out


def check_loops(seq: list[Item], flags: int) -> str | None:
    """Exponential backtracking in ``seq`` or in any lookaround or atomic body in it."""
    for body, fl in [(seq, flags), *_opaque_bodies(seq, flags)]:
        why = _empty_loop(body) or _exponential(body, fl)
        if why:
            return why
    return None


def _opaque_bodies(seq: list[Item], flags: int) -> Iterable[tuple[list[Item], int]]:
    """The bodies matched apart from the main path, with the flags in force there."""
    for op, av in seq:
        name = op_name(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            yield list(av[1]), flags
            yield from _opaque_bodies(list(av[1]), flags)
            continue
        if name == "ATOMIC_GROUP":
            yield list(av), flags
        elif name == "POSSESSIVE_REPEAT":
            yield [("MAX_REPEAT", av)], flags  # as greedy: its passes backtrack inside
        fl = (flags | av[1]) & ~av[2] if name == "SUBPATTERN" else flags
        for child in children((op, av)):
            yield from _opaque_bodies(child, fl)


def _empty_loop(seq: list[Item]) -> str | None:
    for item in seq:
        op, av = item
        if op_name(op) in REPEATS and (av[1] == MAXREPEAT or av[1] > _LARGE_REPEAT) \
                and nullable(av[2]):
            return "a repeated group that can match nothing, e.g. (a?)+ or (a|)+; " \
                   "make the group match at least one character: (a?)+ -> a*"
        for child in children(item):
            why = _empty_loop(child)
            if why:
                return why
    return None


def _exponential(seq: list[Item], flags: int) -> str | None:
    auto = _Auto()
    try:
        _build_seq(auto, seq, flags)
        if _ambiguous_loop(auto):
            return "text that a repeated part can match in two ways, e.g. (?:ab|.b)+, " \
                   "(?:a|(a))+ or (?:bot|.ot)+; make each pass match one way only: " \
                   "drop an alternative another covers ((?:bot|.ot)+ -> (?:.ot)+), give " \
                   "alternatives different first characters, or make the part atomic " \
                   "((?>...), Python 3.11+)"
    except _TooComplex:
        return "too complex to check for catastrophic backtracking; split it into " \
               "simpler header conditions or use a match callable"
    return None


def _build_seq(auto: _Auto, seq: Iterable[Item], flags: int) -> _Frag:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    null = 1
    for item in seq:
        f, fin, n = _build(auto, item, flags)
        auto.link(last, f)
        first = _sum(first, f, null)
        last = _sum(fin, last, n)
        null *= n
    return first, last, null


def _build(auto: _Auto, item: Item, flags: int) -> _Frag:
    op, av = item
    name = op_name(op)
    if is_char(item):
        p = auto.add(_class_rx(item), flags)
        return {p: 1}, {p: 1}, 0
    if name in ZERO_WIDTH[:3]:  # AT, ASSERT, ASSERT_NOT
        return {}, {}, 1
    if name == "SUBPATTERN":
        return _build_seq(auto, av[3], (flags | av[1]) & ~av[2])
    if name == "BRANCH" or name == "GROUPREF_EXISTS":
        alts = av[1] if name == "BRANCH" else av[1:]
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        null = 0
        for alt in alts:
            f, fin, n = _build_seq(auto, alt or [], flags)
            first, last, null = _sum(first, f), _sum(last, fin), null + n
        return first, last, null
    if name in REPEATS:
        lo, hi, body = av
        if hi == 0:
            return {}, {}, 1
        if 2 <= hi <= _LARGE_REPEAT and len(auto.atoms) + hi * _size(body) <= _UNROLL:
            # a few passes: written out as e{lo} (e (e ...)?)?, the paths re takes
            copies: list[Item] = [("SUBPATTERN", (None, 0, 0, body))] * lo
            rest: list[Item] = []
            for _ in range(hi - lo):
                rest = [("MAX_REPEAT", (0, 1, [("SUBPATTERN", (None, 0, 0, body)), *rest]))]
            return _build_seq(auto, copies + rest, flags)
        f, fin, n = _build_seq(auto, body, flags)
        if hi >= 2:
            auto.link(fin, f)
        return f, fin, n + (1 if lo == 0 else 0)
    # one way from where it starts: an atomic group, a possessive repeat, a backreference
    if name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
        body = list(av) if name == "ATOMIC_GROUP" else [(op, av)]
        atoms = all_atoms(body)
        rx = "|".join(_class_rx(a) for a in atoms) if atoms else "(?!)"
        null = 1 if nullable(body) else 0
        long = fixed_len(body) not in (0, 1)
    else:  # GROUPREF, or a form not known here
        rx, null, long = r"(?s:.)", 1, True
    p = auto.add(rx, flags, opaque=True)
    if long:
        auto.link({p: 1}, {p: 1}, stay=True)
    return {p: 1}, {p: 1}, null


def _size(seq: Iterable[Item]) -> int:
    """How many positions ``seq`` takes once small repeats are written out."""
    total = 0
    for item in seq:
        op, av = item
        name = op_name(op)
        if name in REPEATS:
            total += _size(av[2]) * (av[1] if av[1] <= _LARGE_REPEAT else 1)
        elif name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT", "GROUPREF") or is_char(item):
            total += 1
        else:
            total += sum(_size(c) for c in children(item))
    return total


def _class_rx(atom: Item) -> str:
    """A regular expression for the characters one item matches."""
    op, av = atom
    name = op_name(op)
    if name == "LITERAL":
        return f"\\U{av:08x}"
    if name == "NOT_LITERAL":
        return f"[^\\U{av:08x}]"
    if name == "IN":
        parts: list[str] = []
        for sop, sav in av:
            sname = op_name(sop)
            if sname == "NEGATE":
                parts.insert(0, "^")
            elif sname == "LITERAL":
                parts.append(f"\\U{sav:08x}")
            elif sname == "RANGE":
                parts.append(f"\\U{sav[0]:08x}-\\U{sav[1]:08x}")
            elif sname == "CATEGORY" and op_name(sav) in _CLASS_CATEGORIES:
                parts.append(_CLASS_CATEGORIES[op_name(sav)])
            else:
                return r"(?s:.)"  # a form not known here: any character
        return "[" + "".join(parts) + "]" if parts and parts != ["^"] else r"(?s:.)"
    return r"(?s:.)"  # ANY, and anything else: any character


def _alphabet(auto: _Auto) -> list[str]:
    """Characters enough to tell whether two positions can read the same one: a base
    sample, each character the pattern names with its case variants, range ends, and
    where a range is wide, where Unicode's digit / word / space classes start and end."""
    chars = set(ALPHABET)
    wide = False
    for rx, _ in auto.atoms:
        for m in re.finditer(r"\\U([0-9a-f]{8})(?:-\\U([0-9a-f]{8}))?", rx):
            lo = int(m.group(1), 16)
            hi = int(m.group(2), 16) if m.group(2) else lo
            if hi - lo > 256:
                wide = True
                span = [lo, hi]
            else:
                span = list(range(lo, hi + 1))
            for cp in span:
                c = chr(cp)
                chars.update(c, c.lower(), c.upper(), c.casefold(), c.title())
    if wide:
        chars.update(map(chr, _category_edges()))
    return sorted(chars)


_EDGES: list[int] = []


def _category_edges() -> list[int]:
    """Every code point where ``\\d``, ``\\w`` or ``\\s`` starts or stops matching
    (computed once, on the first pattern with a wide character range)."""
    if not _EDGES:
        prev = None
        for cp in range(0x110000):
            c = chr(cp)
            k = (c.isdecimal(), c.isalnum() or c == "_", c.isspace())
            if k != prev:
                _EDGES.extend((cp - 1, cp) if cp else (cp,))
                prev = k
    return _EDGES


def _labels(auto: _Auto) -> list[int]:
    """Per position, the bit set of the alphabet characters it can read."""
    alphabet = _alphabet(auto)
    out = []
    for rx, fl in auto.atoms:
        c = re.compile(rx, fl)
        bits = 0
        for i, ch in enumerate(alphabet):
            if c.fullmatch(ch):
                bits |= 1 << i
        out.append(bits)
    return out


def _ambiguous_loop(auto: _Auto) -> bool:
    """Whether two different paths read the same text from a position back to it."""
    n = len(auto.atoms)
    succ: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]  # (dst, plain, stay)
    for (p, q), (plain, stay) in auto.edges.items():
        succ[p].append((q, plain, stay))
    comp = _sccs(n, lambda p: [q for q, _, _ in succ[p]])
    labels = _labels(auto)
    # Product nodes (p, q, locked): both paths at p and q; "locked" when both entered the
    # same opaque position on the same step, so they leave it together. Only pairs inside
    # one strongly connected part of the automaton can lie on a common cycle.
    Node = tuple[int, int, bool]
    seeds: list[Node] = [(p, p, auto.opaque[p]) for p in range(n)
                         if any(comp[q] == comp[p] for q, _, _ in succ[p])]
    graph: dict[Node, list[tuple[Node, bool]]] = {}
    todo = list(seeds)
    for s in seeds:
        graph[s] = []
    steps = 0
    while todo:
        node = todo.pop()
        p, q, locked = node
        out = graph[node]
        for p2, plain1, stay1 in succ[p]:
            if comp[p2] != comp[p]:
                continue
            for q2, plain2, stay2 in succ[q]:
                if comp[q2] != comp[q] or not labels[p2] & labels[q2]:
                    continue
                steps += 1
                if steps > _BUDGET:
                    raise _TooComplex
                for k1, w1 in ((0, plain1), (1, stay1)):
                    for k2, w2 in ((0, plain2), (1, stay2)):
                        if not w1 or not w2 or (locked and k1 != k2):
                            continue  # paths that entered together leave together
                        # both enter one opaque position on this step, or stay in it
                        lock = p2 == q2 and auto.opaque[p2] and (k1 == k2 == 0 or (
                            locked and k1 == k2 == 1))
                        target = (p2, q2, lock)
                        if p == q and p2 == q2 and k1 == k2:
                            out.append((target, False))  # the same step
                            if w1 >= 2:
                                out.append((target, True))  # two ways to take it
                        else:
                            out.append((target, True))
                        if target not in graph:
                            graph[target] = []
                            todo.append(target)
    nodes = list(graph)
    index = {v: i for i, v in enumerate(nodes)}
    pcomp = _sccs(len(nodes), lambda i: [index[t] for t, _ in graph[nodes[i]]])
    diagonal = {pcomp[i] for i, (p, q, _) in enumerate(nodes) if p == q}
    for i, (p, q, _) in enumerate(nodes):
        c = pcomp[i]
        if c not in diagonal:
            continue
        if p != q:
            return True
        for t, split in graph[nodes[i]]:
            if split and pcomp[index[t]] == c:
                return True
    return False


def _sccs(n: int, succ: Any) -> list[int]:
    """Strongly connected component id of each of ``n`` nodes (iterative Tarjan)."""
    index = [-1] * n
    low = [0] * n
    on = [False] * n
    comp = [-1] * n
    stack: list[int] = []
    counter = 0
    ncomp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, iter(succ(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on[root] = True
        while work:
            v, it = work[-1]
            for w in it:
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on[w] = True
                    work.append((w, iter(succ(w))))
                    break
                if on[w]:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    while True:
                        w = stack.pop()
                        on[w] = False
                        comp[w] = ncomp
                        if w == v:
                            break
                    ncomp += 1
    return comp
