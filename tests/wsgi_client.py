"""One WSGI request driven by hand, as a server drives it: ``start_response`` recorded, the
body read to its end, then ``close()`` called when the result has one."""

from __future__ import annotations

from typing import Any

Header = tuple[str, str]


def wsgi_call(app: Any, environ: dict[str, Any]) -> tuple[str, list[Header], bytes]:
    """Call ``app`` with ``environ``: the status and headers it started last, the body."""
    started: list[tuple[str, list[Header]]] = []

    def start_response(status: str, headers: list[Header], exc_info: Any = None) -> Any:
        started.append((status, list(headers)))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return status, headers, body
