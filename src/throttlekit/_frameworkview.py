"""The request view of a framework's request: a :class:`~throttlekit.RequestView` that
carries the framework's own request object and reads forms with the framework's parser;
built once per request and kept in its environ, META or scope (:func:`view_of`)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._request import _UNREADABLE, RequestView

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["FRAMEWORK_FORMS", "VIEW_KEY", "FrameworkView", "detach_view", "form_fields",
           "framework_body", "user_function", "user_id_of", "user_key", "user_or_ip_key",
           "view_of"]

#: environ/scope key: the :class:`FrameworkView` of this request
VIEW_KEY = "throttlekit.view"


class FrameworkView(RequestView):
    """A :class:`~throttlekit.RequestView` that also carries the framework's own request
    object as ``request`` (a Flask/werkzeug request, a Django ``HttpRequest``, a Starlette
    ``Request``), for key functions that need, say, ``request.user``.

    Once the response is over (:meth:`detach`), the view holds the framework's request
    weakly: ``request`` is that request as long as something else keeps it (the framework,
    a test client's response, you), else None. The framework's request holds the environ,
    META or scope, which holds this view: a strong reference would be a cycle.
    """

    __slots__ = ("_native",)

    _native: Any

    @property
    def request(self) -> Any:
        """The framework's own request object (None when there is none, or once the
        response is over and nothing else keeps it)."""
        native = self._native
        if native.__class__ is weakref.ReferenceType:
            return native()
        return native

    @request.setter
    def request(self, native: Any) -> None:
        self._native = native

    def detach(self) -> None:
        """:meth:`RequestView.detach`, and the framework's request held weakly."""
        super().detach()
        native = self._native
        if native is not None and native.__class__ is not weakref.ReferenceType:
            with contextlib.suppress(TypeError):  # not weakly referable: kept as it is
                self._native = weakref.ref(native)

    # A framework's view (``contrib``) reads a form (urlencoded, multipart) with the
    # framework's own parser, so that the rule sees exactly the fields the view will see
    # (parsers disagree on unusual bodies: UTF-7 names, filename*, base64 parts...):
    # Django's ``request.POST``, werkzeug's ``request.form`` (Flask), both over the body
    # they cached (the view still reads it), through ``_framework_form`` and
    # ``framework_body``. Starlette's ``request.form()`` is async: see ``use_form``.

    def _framework_form(self, req: Any, mimetype: Any, cached: str, attr: str,
                        read: Callable[[], bytes]) -> Mapping[str, str]:
        """The form as the framework parses it (``req.<attr>``, cached in
        ``req.__dict__[cached]`` once parsed), for the form types it parses, over the
        body its ``read`` caches."""
        if mimetype not in FRAMEWORK_FORMS:
            ctype = self.headers.get("content-type") or ""
            if ctype.partition(";")[0].strip().lower() in FRAMEWORK_FORMS:
                return _UNREADABLE  # we and the framework disagree on the type: no key
            return super()._read_form()  # JSON: read as the view does (json.loads)
        if cached not in req.__dict__ and framework_body(self, read) is None:
            # too big (or gone): not parsed, the view parses it (the stream is intact)
            return _UNREADABLE if self._has_body() else _EMPTY_FORM
        try:
            return form_fields(getattr(req, attr))
        except Exception:
            return _UNREADABLE  # the view's own parsing fails the same way

    if TYPE_CHECKING:
        @property
        def route(self) -> str | None:
            """The route the request was matched by, when one view serves several and
            each counts on its own (Django's URL pattern: a property of its view); None
            elsewhere."""
    else:
        route = None  # a class attribute: no call per request where there is no route

    def user_id(self) -> str | None:
        """The authenticated user's id (None: anonymous): the :func:`user_function` hook
        when one is set, else what the framework knows (:meth:`framework_user`)."""
        hook = _user_hook[0]
        found = hook(self) if hook is not None else self.framework_user()
        return None if found is None or found == "" else str(found)

    def framework_user(self) -> Any:
        """The user id as the framework knows it: Starlette's ``request.user`` (its
        ``AuthenticationMiddleware``) when authenticated, else ``request.state.user``. The
        Django and Flask views override it."""
        req = self.request
        scope = getattr(req, "scope", None)
        if not isinstance(scope, Mapping):
            return None
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return getattr(user, "identity", None) or getattr(user, "display_name", None)
        state = scope.get("state")
        user = state.get("user") if isinstance(state, Mapping) else None
        return user_id_of(user)

    def use_form(self, parsed: Any) -> None:
        """Take ``parsed`` (a framework's multidict: Starlette's ``FormData``) as the form,
        or None when the framework could not parse the body (the form is unreadable)."""
        self._form = _UNREADABLE if parsed is None else form_fields(parsed)


#: the hook of :func:`user_function` (None: each framework's own notion of the user)
_user_hook: list[Callable[[FrameworkView], Any] | None] = [None]



UserFunction = Callable[[FrameworkView], Any]


def user_function(fn: UserFunction | None) -> UserFunction | None:
    """Set what the ``"user"`` and ``"user_or_ip"`` keys read: ``fn(view)`` returns the
    request's user id, or None for an anonymous request (``view.request`` is the
    framework's request). ``None`` restores each framework's default. Usable as a
    decorator::

        @user_function
        def api_user(view):
            return view.request.headers.get("x-user-id")
    """
    if fn is not None and not callable(fn):
        raise ConfigError(f"user_function takes a function of the request view, got {fn!r}")
    _user_hook[0] = fn
    return fn


def user_id_of(user: Any) -> Any:
    """The id of a user object: flask_login's ``get_id()``, else ``id``/``pk``, else a
    string as it is; None for an anonymous user."""
    if user is None or getattr(user, "is_anonymous", False) is True:
        return None
    if isinstance(user, (str, int)):
        return user
    get_id = getattr(user, "get_id", None)
    if callable(get_id):
        return get_id()
    for attr in ("id", "pk"):
        found = getattr(user, attr, None)
        if found is not None:
            return found
    return None


def user_key(view: Any) -> str | None:
    """The ``"user"`` key: the authenticated user's id; None (the limit does not apply)
    for an anonymous request or outside a framework."""
    user_id = getattr(view, "user_id", None)
    return user_id() if user_id is not None else None


def user_or_ip_key(view: Any) -> str | None:
    """The ``"user_or_ip"`` key: ``user:<id>`` when authenticated, else ``ip:<address>``."""
    found = user_key(view)
    if found is not None:
        return "user:" + found
    return "ip:" + (view.client_ip or "unknown")


#: the form types frameworks parse themselves (JSON the views parse with json.loads)
FRAMEWORK_FORMS = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_EMPTY_FORM: Mapping[str, str] = {}


def form_fields(parsed: Any) -> dict[str, str]:
    """A framework's parsed form (Django ``QueryDict``, werkzeug ``MultiDict``, Starlette
    ``FormData``) as the rule's form: each text field's value as the framework's ``get``
    gives it to views (the first of repeated fields in werkzeug, the last in Django and
    Starlette); files left out."""
    return {k: v for k in parsed if isinstance(v := parsed.get(k), str)}


def framework_body(view: RequestView, read: Callable[[], bytes]) -> bytes | None:
    """The body through the framework's own cached read, when its Content-Length is at
    most ``view.max_form_bytes`` (None otherwise, or when the framework cannot give it:
    Django after its multipart parser consumed the stream)."""
    text = view.headers.get("content-length")
    try:
        length = int(text) if text and text.strip() else 0
    except ValueError:
        return None
    if length < 0 or length > view.max_form_bytes:
        return None
    try:
        data = bytes(read())
    except Exception:
        return None
    return data if len(data) == length else None


def detach_view(raw: Mapping[str, Any]) -> None:
    """The response is over: detach the framework view kept in ``raw`` (if any), so that
    the request leaves no reference cycle (:meth:`FrameworkView.detach`)."""
    view = raw.get(VIEW_KEY)
    if view is not None:
        view.detach()


def view_of(lim: Limiter, raw: MutableMapping[str, Any], native: Any,
            cls: type[FrameworkView] = FrameworkView, *, asgi: bool = False) -> FrameworkView:
    """The request view for ``raw`` (an environ, Django's META, an ASGI scope), built once
    per request (as a ``cls``) and kept in it."""
    view = raw.get(VIEW_KEY)
    if view is not None:
        if view.request is None and native is not None:
            view.request = native
        return view  # type: ignore[no-any-return]
    resolver = lim.resolver
    made = (cls.from_scope(raw, resolver) if asgi  # type: ignore[arg-type]
            else cls.from_environ(raw, resolver))  # type: ignore[arg-type]
    assert isinstance(made, FrameworkView)
    made.request = native
    raw[VIEW_KEY] = made
    return made

