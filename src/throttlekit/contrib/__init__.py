"""Framework integrations: ``throttlekit.contrib.flask``, ``.django``, ``.starlette`` and
``.fastapi``. Each imports its framework; importing ``throttlekit`` alone imports none."""

from __future__ import annotations

from .._frameworkview import user_function

__all__: list[str] = ["user_function"]
