"""What a rules file's problems look like: one :class:`RuleError` per problem (line, message,
hint), all of them raised together as one :class:`RulesFileError`."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["RuleError", "RulesFileError", "did_you_mean"]


@dataclass(frozen=True)
class RuleError:
    """One problem in a rules file: where, what, and how to fix it."""

    line: int
    message: str
    hint: str = ""

    def format(self, path: str) -> str:
        text = f"{path}:{self.line}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class RulesFileError(ConfigError):
    """A rules file with errors; ``errors`` lists every one (sorted by line)."""

    def __init__(self, path: str, errors: Sequence[RuleError]) -> None:
        self.path = path
        self.errors = sorted(errors, key=lambda e: e.line)
        n = len(self.errors)
        head = f"{path}: {n} error{'s' if n != 1 else ''} in rules file"
        super().__init__("\n".join([head, *(e.format(path) for e in self.errors)]))


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``"did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
