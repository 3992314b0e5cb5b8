"""Where things are in a rules file: the line of each table, of each key and of each element
of an array value (tomllib does not say). A scan of the text, independent of the parse."""

from __future__ import annotations

import re

__all__ = ["Lines"]

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-.\"]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*(?:\"([^\"]*)\"|([A-Za-z0-9_\-]+))\s*[.=]")
_KEY_START = re.compile(r"(?:\"([^\"]*)\"|([A-Za-z0-9_\-]+))\s*[.=]")


class Lines:
    """Where each table, each of its keys and each element of an array value starts in the
    source (tomllib does not say)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        self.elements: dict[tuple[str, int, str], list[int]] = {}
        counts: dict[str, int] = {}
        current: tuple[str, int] = ("", 0)
        in_multiline = False
        lines = text.splitlines()
        skip_to = 0
        for n, line in enumerate(lines, 1):
            if n <= skip_to:
                continue
            if in_multiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = False
                continue
            m = _ARRAY_HEADER.match(line)
            if m:
                kind = m.group(1)
                i = counts.get(kind, 0)
                counts[kind] = i + 1
                current = (kind, i)
                self.tables[current] = n
                continue
            m = _TABLE_HEADER.match(line)
            if m:
                current = (m.group(1).strip('"'), 0)
                self.tables.setdefault(current, n)
                continue
            m = _KEY_LINE.match(line)
            if m:
                name = m.group(1) if m.group(1) is not None else m.group(2)
                self.keys.setdefault((current[0], current[1], name), n)
                eq = line.find("=", m.end() - 1)
                rest = line[eq + 1:] if eq >= 0 else ""
                if rest.lstrip().startswith("["):
                    col = eq + 1 + len(rest) - len(rest.lstrip())
                    # a root-level `throttle = [{...}, {...}]`: each inline table is a rule
                    root = name if current == ("", 0) else None
                    skip_to, elems = self._array(lines, n, col, root)
                    self.elements.setdefault((current[0], current[1], name), elems)
                    continue
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = True

    def _array(self, lines: list[str], start: int, col: int, root: str | None
               ) -> tuple[int, list[int]]:
        """Scan the array opening at ``lines[start - 1][col]``: the line of each element,
        and the line where it closes (inline tables of ``root``: their keys too)."""
        elems: list[int] = []
        stack: list[str] = []
        quote: str | None = None
        expect = expect_key = False
        ln, c = start, col
        while ln <= len(lines):
            s = lines[ln - 1]
            while c < len(s):
                ch = s[c]
                if quote is not None:
                    if len(quote) == 3:
                        if s.startswith(quote, c):
                            quote = None
                            c += 3
                            continue
                    elif ch == "\\" and quote == '"':
                        c += 2
                        continue
                    elif ch == quote:
                        quote = None
                    c += 1
                    continue
                if ch == "#":
                    break
                if ch in " \t":
                    c += 1
                    continue
                if expect and len(stack) == 1 and ch not in "],":
                    elems.append(ln)
                    expect = False
                    if root is not None:
                        self.tables.setdefault((root, len(elems) - 1), ln)
                if expect_key and len(stack) == 2 and ch not in "},":
                    expect_key = False
                    m = _KEY_START.match(s, c)
                    if m and root is not None and elems:
                        key = m.group(1) if m.group(1) is not None else m.group(2)
                        self.keys.setdefault((root, len(elems) - 1, key), ln)
                if s.startswith('"""', c) or s.startswith("'''", c):
                    quote = s[c:c + 3]
                    c += 3
                    continue
                if ch in "\"'":
                    quote = ch
                elif ch in "[{":
                    stack.append(ch)
                    if len(stack) == 1:
                        expect = True
                    elif len(stack) == 2 and ch == "{":
                        expect_key = True
                elif ch in "]}":
                    if stack:
                        stack.pop()
                    if not stack:
                        return ln, elems
                elif ch == ",":
                    if len(stack) == 1:
                        expect = True
                    elif len(stack) == 2 and stack[-1] == "{":
                        expect_key = True
                c += 1
            ln += 1
            c = 0
        return ln, elems

    def table(self, kind: str, i: int = 0) -> int:
        return self.tables.get((kind, i), 1)

    def key(self, kind: str, i: int, name: str) -> int:
        return self.keys.get((kind, i, name), self.table(kind, i))

    def element(self, kind: str, i: int, name: str, j: int) -> int:
        """The line of element ``j`` of the array ``name`` (else of the key)."""
        elems = self.elements.get((kind, i, name), [])
        return elems[j] if j < len(elems) else self.key(kind, i, name)
