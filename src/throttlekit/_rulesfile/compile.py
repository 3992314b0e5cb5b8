"""Reading a parsed TOML document against the schema: every section, every table, every
field, collecting every error (with its line and a hint) instead of stopping at the first.

Nothing here knows a particular kind: :func:`Compiler.table` reads any :class:`Kind` the same
way (the name, unknown fields with a did-you-mean, missing required fields, the conditions,
then each field in declaration order).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._algorithms import ALGORITHMS, DEFAULT_STRATEGY
from .conditions import Cond, combine, ip_predicate
from .errors import RulesFileError, did_you_mean
from .fields import At, Report
from .lines import Lines
from .model import RuleSet, RuleSpec
from .schema import CONDITIONS, KINDS, LIMITER, SHEDDING, Kind

__all__ = ["Compiler"]

_PATHS = frozenset(("paths", "path_prefix"))
_TOP = ("version", "limiter", "shedding", *(k.name for k in KINDS))


class Compiler:
    """Compiles one file's TOML data to a :class:`RuleSet`, or raises
    :class:`RulesFileError` with every error it found."""

    def __init__(self, text: str, path: str, strategies: Sequence[str] | None) -> None:
        self.lines = Lines(text)
        self.path = path
        self.report = Report(tuple(strategies) if strategies is not None else tuple(ALGORITHMS),
                             base="" if path.startswith("<") else os.path.dirname(path) or ".")
        self.default_strategy = DEFAULT_STRATEGY
        self.names: dict[str, int] = {}  # rule name -> the line it is first given on

    def err(self, line: int, message: str, hint: str = "") -> None:
        self.report.err(line, message, hint)

    def parse(self, data: Mapping[str, Any]) -> RuleSet:
        out = RuleSet(self.path)
        for top in data:
            if top not in _TOP:
                line = self.lines.tables.get((top, 0)) or self.lines.key("", 0, top)
                self.err(line, f"unknown section {top!r}",
                         did_you_mean(top, _TOP) or f"sections are: {', '.join(_TOP)}")
        version = data.get("version", 1)
        if isinstance(version, bool) or version != 1:
            self.err(self.lines.key("", 0, "version"), f"unsupported version {version!r}",
                     "this throttlekit reads version = 1")
        if "limiter" in data:
            out.limiter = self.settings(data["limiter"])
        for kind in KINDS:
            tables = data.get(kind.name)
            if tables is None:
                continue
            if not isinstance(tables, list):
                self.err(self.lines.table(kind.name), f"{kind.name} must be written "
                         f"[[{kind.name}]] (an array of tables), one per rule",
                         f"write [[{kind.name}]], not [{kind.name}]")
                continue
            for i, table in enumerate(tables):
                spec = self.table(kind, i, table)
                if spec is not None:
                    out.rules.append(spec)
        if "shedding" in data:
            out.shedding = self.table(SHEDDING, 0, data["shedding"])
        if self.report.errors:
            raise RulesFileError(self.path, self.report.errors)
        out.imports = sorted(self.report.imports)
        return out

    def settings(self, table: Any) -> dict[str, Any]:
        """The ``[limiter]`` table: Limiter keyword arguments, read in the file's order."""
        if not isinstance(table, dict):
            self.err(self.lines.table("limiter"), "limiter must be a table",
                     "write [limiter] followed by settings")
            return {}
        out: dict[str, Any] = {}
        for k, v in table.items():
            at = self._at("limiter", 0, "[limiter]", k, out)
            if k not in LIMITER:
                self.err(at.line, f"unknown setting {k!r} in [limiter]",
                         did_you_mean(k, tuple(LIMITER))
                         or f"settings are: {', '.join(LIMITER)}")
                continue
            n_errors = len(self.report.errors)
            out[k] = LIMITER[k].parse(v, at)
            if k == "strategy" and len(self.report.errors) == n_errors:
                self.default_strategy = v
        return out

    def table(self, kind: Kind, i: int, table: Any) -> RuleSpec | None:
        """One table of ``kind`` (the ``i``-th in the file) as a RuleSpec; None when it has
        errors (reported)."""
        tline = self.lines.table(kind.name, i)
        if not isinstance(table, dict):
            if kind.rule:
                self.err(tline, f"{kind.title} #{i + 1} must be a table")
            else:
                self.err(tline, f"{kind.title} must be a table",
                         f"write {kind.title} followed by settings")
            return None
        n_errors = len(self.report.errors)
        name, label = self._name(kind, i, table) if kind.rule else (kind.name, kind.title)
        self._unknown_and_missing(kind, i, table, label, tline)
        kw: dict[str, Any] = {}
        spec = RuleSpec(kind.name, name, tline, kw)
        if kind.rule:
            self._conditions(kind, i, table, label, spec)
        for f in kind.fields:
            if f.name in table:
                kw[f.name] = f.type.parse(table[f.name], self._at(kind.name, i, label, f.name,
                                                                   kw))
        if len(self.report.errors) != n_errors:
            return None
        key = kind.key()
        if key is not None:
            spec.key = str(table.get("key", key.shown))
        elif not kind.rule:
            spec.key = "global"
        spec.limit, spec.options = kind.describe(table, kw, self.default_strategy)
        return spec

    def _at(self, section: str, i: int, label: str, name: str, values: dict[str, Any]) -> At:
        return At(self.report, label, name, self.lines.key(section, i, name),
                  lambda j: self.lines.element(section, i, name, j), values)

    def _name(self, kind: Kind, i: int, table: Mapping[str, Any]) -> tuple[str, str]:
        """The rule's name (unique in the file) and the label its errors start with."""
        name = table.get("name")
        if not isinstance(name, str) or not name:
            label = f"{kind.title} #{i + 1}"
            line = self.lines.key(kind.name, i, "name") if "name" in table \
                else self.lines.table(kind.name, i)
            self.err(line, f"{label}: name must be a non-empty string",
                     'every rule needs a unique name = "..." (it shows in logs and headers)')
            return "", label
        label = f"{kind.title} {name!r}"
        line = self.lines.key(kind.name, i, "name")
        if name in self.names:
            self.err(line, f"{label}: duplicate rule name {name!r} "
                     f"(first used on line {self.names[name]})",
                     "rule names must be unique across all kinds; rename one of them")
        else:
            self.names[name] = line
        return name, label

    def _unknown_and_missing(self, kind: Kind, i: int, table: Mapping[str, Any], label: str,
                             tline: int) -> None:
        fields = kind.names()
        for k in table:
            if k not in fields:
                self.err(self.lines.key(kind.name, i, k), f"{label}: unknown field {k!r}",
                         did_you_mean(k, fields) or f"{kind.title} takes: {', '.join(fields)}")
        required = kind.required()
        for k in required:
            if k not in table:
                self.err(tline, f"{label}: missing required field {k!r}",
                         kind.required_hint or f"{kind.title} needs {', '.join(required)}")

    def _conditions(self, kind: Kind, i: int, table: Mapping[str, Any], label: str,
                    spec: RuleSpec) -> None:
        """The rule's conditions, combined into its ``match`` (``predicate`` and ``ips``)."""
        got: list[Cond] = []
        for f in CONDITIONS:
            if f.name in table:
                cond = f.type.parse(table[f.name], self._at(kind.name, i, label, f.name, {}))
                if cond is not None:
                    got.append(cond)
        if kind.needs_condition and not any(f.name in table for f in CONDITIONS):
            self.err(spec.line, f"{label}: no condition", kind.needs_condition)
        preds: list[Any] = []
        if "methods" in kind.condition_args:  # a throttle: method and path declared
            declared: dict[str, list[str]] = {}
            for c in got:
                d = c.declared
                # path and path_prefix together must both hold, and a declared path holds
                # when either does: the second stays a predicate
                if d is not None and not (_PATHS & d.keys() and _PATHS & declared.keys()):
                    declared.update(d)
                else:
                    preds.extend(c.preds)
            spec.kwargs.update(declared)
        else:
            preds = [p for c in got for p in c.preds]
        predicate = combine(preds)
        ips = next((c.ips for c in got if c.ips is not None), None)
        spec.match = " ".join(s for c in got for s in c.shown) or "*"
        if kind.condition_args == ("predicate", "ips"):
            spec.kwargs.update(predicate=predicate, ips=ips)
        else:
            if ips is not None:
                ipp = ip_predicate(ips)
                predicate = ipp if predicate is None else combine([predicate, ipp])
            spec.kwargs["match"] = predicate
