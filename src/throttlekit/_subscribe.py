"""``Limiter.on``'s and ``off``'s bodies: what their first argument means (a kind or a
callback)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._events import EventCallback

__all__ = ["subscribe", "unsubscribe"]


def subscribe(engine: Engine, kind: object, callback: EventCallback | None) -> Any:
    """Subscribe ``callback`` to ``kind`` (every kind when ``kind`` is the callback);
    the callback, or with a kind alone the decorator that subscribes one."""
    if callback is None and callable(kind):
        engine.on(None, kind)
        return kind
    if not isinstance(kind, str):
        raise ConfigError(f"on() takes an event kind or a callback, got {kind!r}")
    if callback is None:
        name = kind

        def decorator(fn: EventCallback) -> EventCallback:
            engine.on(name, fn)
            return fn

        return decorator
    engine.on(kind, callback)
    return callback


def unsubscribe(engine: Engine, kind: object, callback: EventCallback | None) -> bool:
    """Unsubscribe ``callback`` from ``kind`` (every kind when ``kind`` is the callback):
    whether it was subscribed there."""
    if callback is None and callable(kind):
        return engine.listeners.remove(None, kind)
    if not isinstance(kind, str) or callback is None:
        raise ConfigError(f"off() takes an event kind and a callback, or a callback, got "
                          f"{kind!r}, {callback!r}")
    return engine.listeners.remove(kind, callback)
