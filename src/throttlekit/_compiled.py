"""Which build of the core is running: ``throttlekit.COMPILED``.

The optional compiled build (``THROTTLEKIT_COMPILE=1 pip install .``, see ``docs/index.md``
and ``hatch_build.py``) installs extension modules beside the sources of
:data:`COMPILED_MODULES`; Python imports those instead. Every other install runs the sources.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

from . import _algorithms
from .storage import _memory_hit

__all__ = ["COMPILED", "COMPILED_MODULES", "is_compiled"]

#: what the compiled build compiles (hatch_build.py's list, as modules)
COMPILED_MODULES = (_algorithms, _memory_hit)


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from an extension module (compiled), not a source."""
    path = getattr(module, "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


#: True when the compiled core is in use (every module of COMPILED_MODULES compiled)
COMPILED = all(is_compiled(m) for m in COMPILED_MODULES)
