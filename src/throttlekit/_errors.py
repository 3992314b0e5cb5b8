"""Exceptions raised by throttlekit.

::

    ThrottlekitError
     +-- ConfigError        (also a ValueError) bad configuration, raised at setup
     +-- StorageError       a backend failed; the limiter's on_storage_error policy applies
     +-- RateLimitExceeded  raised by decorators on plain functions; carries the Decision

A denial is a value (a Decision with ``allowed=False``), never an exception, on the
``Limiter`` API itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._decision import Decision

__all__ = ["ConfigError", "RateLimitExceeded", "StorageError", "ThrottlekitError"]


class ThrottlekitError(Exception):
    """Base class of every throttlekit exception."""


class ConfigError(ThrottlekitError, ValueError):
    """Invalid configuration: the message names the bad value."""


class StorageError(ThrottlekitError):
    """A storage backend failed (connection refused, timeout, server error)."""


class RateLimitExceeded(ThrottlekitError):
    """A rate limit refused the call; ``decision`` says which and for how long."""

    def __init__(self, decision: Decision, message: str | None = None) -> None:
        self.decision = decision
        super().__init__(message or f"rate limit exceeded: {decision.rate}")
