"""How the framework-neutral decorators meet a web framework: one :class:`Adapter` per
framework, registered by the module that knows the framework (``throttlekit.contrib.flask``,
``.django``, ``.starlette``, ``.fastapi``) when it is imported.

The core names no framework. An app that only uses decorators (and never imports a
``throttlekit.contrib`` module) gets its adapter through the ``throttlekit.adapters`` entry
points: :func:`discover` loads the entry point named after each framework module that is
already imported (``sys.modules``), at decoration time and when a call finds no request.
A third-party adapter takes the same route: subclass :class:`Adapter`, call
:func:`register_adapter` at import, and declare the entry point::

    [project.entry-points."throttlekit.adapters"]
    myframework = "myframework_throttlekit:ADAPTER"
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._decision import Decision
    from ._limiter import Limiter
    from ._request import RequestView
    from ._rules import Verdict

__all__ = ["Adapter", "Found", "adapter_named", "adapters", "discover", "find_request",
           "on_register", "register_adapter", "unwatch_imports", "watch_imports"]

logger = logging.getLogger("throttlekit")

GROUP = "throttlekit.adapters"

#: (the adapter that found it, the raw environ/META/scope, the framework's request or None)
Found = tuple["Adapter", MutableMapping[str, Any], Any]


class Adapter:
    """How the decorators work in one framework. Every method has a neutral default, so an
    adapter overrides only what its framework needs.

    ``priority``: adapters are asked to :meth:`find` a request in increasing order (an
    argument that is a request before a request context). ``claims``: False for an
    adapter whose requests another adapter finds (FastAPI's are Starlette's): it is asked
    only for the request in the parameter its :meth:`signature` added.
    """

    name: str = ""
    priority: int = 50
    claims: bool = True

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
        """This framework's request among a call's arguments or in its context, or None."""
        return None

    def view(self, lim: Limiter, raw: MutableMapping[str, Any], native: Any) -> RequestView:
        """The request view of a found request (built once per request, kept in ``raw``)."""
        raise NotImplementedError

    async def read_body(self, view: RequestView) -> None:
        """Before an async evaluation whose limits read the form: give ``view`` the body
        (and the form) the framework's own way, when nothing read it yet."""

    def keep(self, raw: MutableMapping[str, Any], native: Any, decision: Decision | None) -> None:
        """Put the Decision where the view reads it (``g.throttle``, ``request.throttle``,
        ``request.state.throttle``)."""

    def allowed(self, lim: Limiter, found: Found, verdict: Verdict) -> None:
        """An endpoint limit allowed the request: arrange the rate-limit headers."""

    def refuse(self, lim: Limiter, found: Found, verdict: Verdict) -> Any:
        """An endpoint limit refused the request: return the framework's 429 response, or
        raise the framework's exception for it."""
        raise NotImplementedError

    def signature(self, fn: Callable[..., Any], sig: inspect.Signature | None
                  ) -> inspect.Signature | None:
        """A replacement signature for the decorated ``fn`` (e.g. FastAPI's hidden request
        parameter), or None to keep its own. The added keyword-only parameter is named
        ``HIDDEN_REQUEST`` (``throttlekit._decorators``); the wrapper pops it and asks this
        adapter to :meth:`find` the request in it."""
        return None

    def dependency(self, lim: Limiter, spec: Any) -> Callable[..., Any]:
        """A dependency applying ``spec`` (FastAPI's ``Depends``); frameworks without
        dependency injection have none."""
        raise NotImplementedError(f"the {self.name} adapter makes no dependencies")


class _EntryPoint(Protocol):
    """What :func:`discover` uses of an ``importlib.metadata.EntryPoint``."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    def load(self) -> Any: ...


_lock = threading.Lock()
#: the registered adapters, by priority
_adapters: tuple[Adapter, ...] = ()
#: those that claim requests: what :func:`find_request` asks, in order
_finders: tuple[Adapter, ...] = ()
#: the entry points (read from the installed metadata once, or given to :func:`discover`)
_entry_points: list[_EntryPoint] | None = None
#: entry points already loaded (or failed), by name
_loaded: set[str] = set()
#: ``len(sys.modules)`` at the last discovery: nothing new to load while it is unchanged
_seen_modules = -1


#: called with each adapter registered from now on (the decorators re-sign the functions
#: decorated before its framework was imported)
_listeners: list[Callable[[Adapter], None]] = []


def register_adapter(adapter: Adapter) -> None:
    """Make ``adapter`` known to the decorators (replacing one of the same name)."""
    global _adapters, _finders
    if not isinstance(adapter, Adapter) or not adapter.name:
        raise TypeError(f"an adapter is a named throttlekit Adapter, got {adapter!r}")
    with _lock:
        others = [a for a in _adapters if a.name != adapter.name]
        _adapters = tuple(sorted([*others, adapter], key=lambda a: a.priority))
        _finders = tuple(a for a in _adapters if a.claims)
    for listener in _listeners:
        listener(adapter)


def on_register(listener: Callable[[Adapter], None]) -> None:
    """Call ``listener(adapter)`` for each adapter registered from now on."""
    _listeners.append(listener)


class _AfterImport:
    """A ``sys.meta_path`` finder that loads a framework's adapter as soon as the framework
    is imported: a function decorated before (a FastAPI endpoint decorated when its module
    is imported, the app built later) then gets the adapter's signature before the
    framework reads it. Installed by :func:`watch_imports`; it removes itself once every
    framework with an entry point is loaded."""

    def __init__(self) -> None:
        self.busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in self.busy or fullname in _loaded or "." in fullname or not any(
            ep.name == fullname for ep in _entry_points or ()
        ):
            return None
        import importlib.util

        self.busy.add(fullname)
        try:  # what the other finders find (this one answers None while busy)
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy.discard(fullname)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        spec.loader = _ThenAdapter(loader, fullname)  # type: ignore[assignment]
        return spec


class _ThenAdapter:
    """A module's loader, then its framework's adapter once the module has run."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        # the module keeps its own loader, as if nobody had watched
        module.__loader__ = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        try:
            discover(names=(self.name,))
        except Exception:  # never break the app's own import
            logger.exception("loading the %s adapter failed", self.name)
        if all(ep.name in _loaded for ep in _entry_points or ()):
            unwatch_imports()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self.loader, name)


_watcher = _AfterImport()


def unwatch_imports() -> None:
    """Take the import watcher off ``sys.meta_path`` (nothing waits for an adapter)."""
    with _lock:
        if _watcher in sys.meta_path:
            sys.meta_path.remove(_watcher)


def watch_imports() -> None:
    """Load each framework's adapter when the framework is imported from now on (see
    ``_AfterImport``); nothing when every framework with an entry point is loaded."""
    global _entry_points
    if _entry_points is None:
        _entry_points = _installed_entry_points()
    if all(ep.name in _loaded or ep.name in sys.modules for ep in _entry_points):
        return
    with _lock:
        if _watcher not in sys.meta_path:
            sys.meta_path.insert(0, _watcher)


def adapters() -> tuple[Adapter, ...]:
    """The registered adapters, in the order they are asked to find a request."""
    return _adapters


def adapter_named(name: str, *, load: bool = True) -> Adapter | None:
    """The adapter called ``name``; with ``load``, its entry point is loaded when it is not
    registered yet (whether or not its framework is imported). None when there is none."""
    for a in _adapters:
        if a.name == name:
            return a
    if load:
        discover(names=(name,))
        for a in _adapters:
            if a.name == name:
                return a
    return None


def _installed_entry_points() -> list[_EntryPoint]:
    from importlib.metadata import entry_points

    try:
        found: list[_EntryPoint] = list(entry_points(group=GROUP))
    except Exception:  # broken metadata must not break a request
        logger.exception("cannot read the %s entry points", GROUP)
        return []
    if not found:  # throttlekit declares its own: the installed metadata is older
        logger.warning(
            "no %s entry points are installed (an editable install older "
            "than this version? run pip install -e . again); decorated functions find a "
            "framework's request only once its throttlekit.contrib module is imported", GROUP)
    return found


def use_entry_points(eps: Iterable[_EntryPoint] | None) -> None:
    """Discover adapters from ``eps`` instead of the installed metadata (None: the
    installed metadata again). For tests, and for running from a source tree whose
    entry points are not installed."""
    global _entry_points, _seen_modules
    _entry_points = None if eps is None else list(eps)
    _seen_modules = -1


def discover(names: Iterable[str] | None = None) -> bool:
    """Load the ``throttlekit.adapters`` entry points of the frameworks already imported
    (or those called ``names``), each once. True when one was loaded now.

    Cheap when nothing was imported since the last call (one length comparison)."""
    global _entry_points, _seen_modules
    modules = sys.modules
    if names is None:
        if len(modules) == _seen_modules:
            return False
        _seen_modules = len(modules)
    wanted = None if names is None else set(names)
    eps = _entry_points
    if eps is None:
        eps = _entry_points = _installed_entry_points()
    loaded = False
    for ep in eps:
        name = ep.name
        if name in _loaded or (name not in wanted if wanted is not None else name not in modules):
            continue
        with _lock:
            if name in _loaded:
                continue
            _loaded.add(name)
        try:
            adapter = ep.load()
        except Exception as exc:
            logger.warning("cannot load the %s adapter (%s = %r): %s: %s",
                           name, GROUP, ep.value, type(exc).__name__, exc)
            continue
        if isinstance(adapter, Adapter) and adapter not in _adapters:
            register_adapter(adapter)
        loaded = True
    return loaded


def find_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
    """The request a decorated function is called in, found by the registered adapters;
    when none claims the call, adapters of newly imported frameworks are loaded and asked."""
    for a in _finders:
        found = a.find(args, kwargs)
        if found is not None:
            return found
    if len(sys.modules) != _seen_modules and discover():
        for a in _finders:
            found = a.find(args, kwargs)
            if found is not None:
                return found
    return None
