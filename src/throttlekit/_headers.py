"""Request headers as rule predicates read them: case-insensitive mappings over a WSGI
environ (no copy) or an ASGI scope's header list."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["EnvironHeaders", "Headers", "header_pairs", "scope_headers"]


class EnvironHeaders(Mapping[str, str]):
    """Case-insensitive headers read straight from a WSGI environ (no copy)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    @staticmethod
    def _env_key(name: str) -> str:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return key
        return "HTTP_" + key

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        value = self._environ.get(self._env_key(name))
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # fast path, no exception
        if not isinstance(name, str):
            return default
        value = self._environ.get(self._env_key(name))
        return value if isinstance(value, str) else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and isinstance(self._environ.get(self._env_key(name)), str)

    def __iter__(self) -> Iterator[str]:
        for key, value in self._environ.items():
            if not isinstance(value, str):
                continue
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                yield key.replace("_", "-").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class Headers(dict[str, str]):
    """A dict with lower-case names whose lookups lower-case the name."""

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower() if isinstance(name, str) else name, default)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name.lower() if isinstance(name, str) else name)

    def __repr__(self) -> str:
        return f"Headers({dict.__repr__(self)})"


def scope_headers(raw: Any) -> Headers:
    headers: dict[str, str] = {}
    try:
        for name, value in raw:
            key = name.decode("latin-1").lower()
            if key in headers:
                sep = "; " if key == "cookie" else ", "
                headers[key] = headers[key] + sep + value.decode("latin-1")
            else:
                headers[key] = value.decode("latin-1")
    except Exception:
        return _careful(raw)
    return Headers(headers)


def _careful(raw: object) -> Headers:
    """The slow path for malformed header lists: skip what is not a pair of bytes."""
    headers: dict[str, str] = {}
    if not isinstance(raw, (list, tuple)):
        return Headers()
    for raw_name, raw_value in header_pairs(raw):
        if not isinstance(raw_name, (bytes, bytearray)) or not isinstance(
            raw_value, (bytes, bytearray)
        ):
            continue
        key = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if key in headers:
            sep = "; " if key == "cookie" else ", "
            headers[key] = headers[key] + sep + value
        else:
            headers[key] = value
    return Headers(headers)


def header_pairs(raw: Any) -> Iterator[tuple[Any, Any]]:
    """The ``(name, value)`` pairs of an ASGI header list (``scope["headers"]``, None for
    none), skipping whatever is not a pair; names and values as they came."""
    for pair in raw or ():
        try:
            name, value = pair
        except (TypeError, ValueError):
            continue
        yield name, value
