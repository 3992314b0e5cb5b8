"""Framework integrations: ``throttlekit.contrib.flask``, ``.django``, ``.starlette`` and
``.fastapi``. Each imports its framework; importing ``throttlekit`` alone imports none."""

from __future__ import annotations

__all__: list[str] = []
