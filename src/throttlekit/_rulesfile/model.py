"""What a rules file compiles to: a :class:`RuleSet` of :class:`RuleSpec` (one per rule, with
the keyword arguments to register it and the columns ``throttlekit rules`` shows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from .errors import RuleError, RulesFileError
from .schema import KINDS, kind_of

__all__ = ["RuleSet", "RuleSpec"]

_RANK = {k.name: i for i, k in enumerate(KINDS)}
_RANK["allow2ban"] = _RANK["fail2ban"]  # bans share one step, in file order


@dataclass
class RuleSpec:
    """One rule of a file, validated: how to register it, and how to show it."""

    kind: str
    name: str
    line: int
    kwargs: dict[str, Any]
    #: human-readable columns for ``throttlekit rules``
    match: str = "*"
    key: str = "-"
    limit: str = "-"
    options: str = ""


@dataclass
class RuleSet:
    """The validated content of a rules file."""

    path: str
    rules: list[RuleSpec] = field(default_factory=list)
    limiter: dict[str, Any] = field(default_factory=dict)
    shedding: RuleSpec | None = None
    #: every callable the file imports by dotted path: (line, field, path). A rules file
    #: runs code: ``throttlekit check`` lists these for review.
    imports: list[tuple[int, str, str]] = field(default_factory=list)

    def ordered(self) -> list[RuleSpec]:
        """The rules in the order the limiter evaluates them."""
        out = sorted(self.rules, key=lambda r: _RANK[r.kind])  # stable: file order within
        if self.shedding is not None:
            out.append(self.shedding)
        return out

    def names(self) -> set[str]:
        return {r.name for r in self.rules}

    def register(self, rules: Any, concurrency: Any) -> None:
        """Register every rule on a ``Rules`` engine and a ``ConcurrencyRules`` registry.

        Raises:
            RulesFileError: the registration refused rules (e.g. a strategy the storage
                cannot run, a name a rule in code already has), each with its line.
        """
        errors: list[RuleError] = []
        specs = [*self.rules, *([self.shedding] if self.shedding is not None else [])]
        for spec in specs:
            kind = kind_of(spec.kind)
            try:
                kind.register(rules, concurrency, spec.name, spec.kwargs)
            except ConfigError as exc:
                where = f"{kind.title} {spec.name!r}" if kind.rule else kind.title
                errors.append(RuleError(spec.line, f"{where}: {exc}", _registration_hint(exc)))
        if errors:
            raise RulesFileError(self.path, errors)


def _registration_hint(exc: ConfigError) -> str:
    text = str(exc)
    if "duplicate rule name" in text:
        return "a rule registered in code has this name; rename one of them"
    if "not available" in text:
        return "this storage backend cannot run that strategy; pick another"
    return ""
