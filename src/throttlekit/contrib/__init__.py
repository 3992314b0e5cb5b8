"""Framework integrations: ``throttlekit.contrib.flask``, ``.django``, ``.starlette`` and
``.fastapi``. Each imports its framework; importing ``throttlekit`` alone imports none.

Here: :func:`user_function` (who the ``"user"`` keys count) and :func:`current_decision`
(the Decision of the decorated limits of the call being served, in any framework or a plain
function)."""

from __future__ import annotations

from .._frameworkview import user_function
from .._settling import current_decision

__all__: list[str] = ["current_decision", "user_function"]
