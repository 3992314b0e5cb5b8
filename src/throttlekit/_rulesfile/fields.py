"""Field types of a rules file: each reads one value, and reports what is wrong with it at its
line, with a hint. The conditions (``path``, ``ips``, ``header``, ...) are in
``conditions.py``; which kind takes which fields is in ``schema.py``.

A field type's :meth:`Field.parse` returns the value for the ``Limiter`` call (or None after
reporting an error); it never raises. Messages start with ``at.what`` (``"[[throttle]]
'login': burst"``) or ``at.label``, exactly as ``throttlekit check`` prints them.
"""

from __future__ import annotations

import importlib
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .._algorithms import ALGORITHMS, MAX_LIMIT, make_algorithm
from .._errors import ConfigError
from .._ipset import IPSet
from .._plans import Plans
from .._rates import MAX_PERIOD, coerce_rates
from .errors import RuleError, did_you_mean

if TYPE_CHECKING:
    from .._request import RequestView

__all__ = [
    "At",
    "Bool",
    "Choice",
    "CountWhen",
    "Duration",
    "Field",
    "Fractions",
    "Import",
    "Int",
    "IntOrImport",
    "Key",
    "Num",
    "Rates",
    "Raw",
    "Report",
    "Strategy",
    "TrustedProxies",
    "import_path",
    "parse_duration",
]

# -- numbers -------------------------------------------------------------------------------

#: The longest duration a rules file may give (findtime, bantime, rate periods): ten years,
#: the bound the API enforces too (see ``_rates.MAX_PERIOD``).
MAX_SECONDS = MAX_PERIOD
_MIN_SECONDS = 0.001
_MIN_RATE_PERIOD = 1.0  # rate strings count in seconds at least ("10/second")
_LEASE_SECONDS = 10 * 86400.0  # concurrency and shedding leases: under ten days
_MAX_HOPS = 64  # X-Forwarded-For entries the client-IP resolution walks at most
# "10m", "10 min", "10 minutes", as rates say "10 per minute": the unit's short form or its
# English word, singular or plural, any case
_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|millis(?:ec(?:ond)?s?)?|s|secs?|seconds?|m|mins?|minutes?"
    r"|h|hrs?|hours?|d|days?|w|weeks?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "ms": 0.001, "millis": 0.001, "s": 1.0, "sec": 1.0, "second": 1.0,
          "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
          "d": 86400.0, "day": 86400.0, "w": 604800.0, "week": 604800.0}


def _unit_seconds(unit: str | None) -> float:
    """Seconds in one ``unit`` as :data:`_DURATION` matched it (``None``: seconds)."""
    u = (unit or "").lower()
    if u.startswith("millis"):
        return 0.001
    if u not in ("ms", "s") and u.endswith("s"):
        u = u[:-1]  # "minutes" -> "minute", "hrs" -> "hr", "secs" -> "sec"
    return _UNITS[u]


@dataclass(frozen=True)
class _Number:
    """What one numeric field accepts. Every number of a rules file goes through
    :meth:`coerce`, so none reaches the limiter as a bool, inf, nan or out of range."""

    minimum: float
    maximum: float
    integer: bool = False  # a TOML integer, not a float
    duration: bool = False  # seconds, or a string with a unit ("10m")
    below: bool = False  # the maximum itself is out of range

    def coerce(self, v: Any) -> Any:
        """``v`` as an int (integer fields) or a float (others).

        Raises:
            ConfigError: what is wrong, without the field's name.
        """
        value: float | None = None
        if isinstance(v, bool):
            pass
        elif isinstance(v, int) or (isinstance(v, float) and not self.integer):
            value = v
        elif isinstance(v, str) and self.duration:
            m = _DURATION.match(v)
            if m:
                value = float(m.group(1)) * _unit_seconds(m.group(2))
        if value is None:
            raise ConfigError(f"must be {self.describe()}, got {type_name(v)} {v!r}")
        # range first: isfinite() of an int too big for a float raises OverflowError
        if value < self.minimum or value > self.maximum or not math.isfinite(value) or (
            self.below and value >= self.maximum
        ):
            raise ConfigError(f"must be {self.describe()}, got {v!r}")
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        if self.integer:
            return f"a whole number from {self.minimum:g} to {int(self.maximum)}"
        if not self.duration:
            return f"a number from {self.minimum:g} to {self.maximum:g}"
        low = "0" if self.minimum == 0 else f"{self.minimum * 1000:g}ms"
        high = f"{self.maximum / 86400:g} days"
        return f"a duration from {low} to {'under ' if self.below else ''}{high}"

    def hint(self) -> str:
        if self.integer:
            return f"write a whole number from {self.minimum:g} to {int(self.maximum)} " \
                   "without quotes"
        if self.duration:
            return ('seconds as a number (600), or a string with a unit: "500ms", "30s", '
                    '"10m", "1h", "1d", "10 minutes"')
        return f"a number from {self.minimum:g} to {self.maximum:g}"


_COUNT = _Number(1, MAX_LIMIT, integer=True)  # maxretry, burst, limit, capacity
_DURATION_N = _Number(_MIN_SECONDS, MAX_SECONDS, duration=True)  # findtime, bantime, --ttl
LEASE = _Number(_MIN_SECONDS, _LEASE_SECONDS, duration=True, below=True)
INTERVAL = _Number(0, MAX_SECONDS, duration=True)  # retry_interval, error_log_interval
_HOPS = _Number(0, _MAX_HOPS, integer=True)


# -- where a value is read -----------------------------------------------------------------


@dataclass
class Report:
    """What reading one file found: its errors, and the callables it imports."""

    strategies: tuple[str, ...]
    errors: list[RuleError] = field(default_factory=list)
    #: every callable the file imports by dotted path: (line, field, path)
    imports: list[tuple[int, str, str]] = field(default_factory=list)
    #: the directory relative file names in the file are read from (its own; "" when the
    #: rules are text with no file)
    base: str = ""

    def err(self, line: int, message: str, hint: str = "") -> None:
        self.errors.append(RuleError(line, message, hint))


@dataclass(slots=True)
class At:
    """One field of one table being read: where it is, and what was read before it."""

    report: Report
    label: str  # "[[throttle]] 'login'", "[shedding]", "[limiter]"
    field: str
    line: int  # the line of the field's key
    elements: Callable[[int], int]  # the line of element j of an array value
    values: dict[str, Any]  # the fields of the same table read so far

    @property
    def what(self) -> str:
        return f"{self.label}: {self.field}"

    def err(self, message: str, hint: str = "", line: int | None = None) -> None:
        self.report.err(self.line if line is None else line, message, hint)

    def callable(self, spec: str) -> Any:
        """The function ``spec`` names (recorded for review), or None after an error."""
        try:
            fn = import_path(spec)
        except ConfigError as exc:
            self.err(f"{self.what}: {exc}",
                     "use 'package.module:function' (or package.module.function); the module "
                     "must be importable by the app (on sys.path / PYTHONPATH)")
            return None
        if not callable(fn):
            self.err(f"{self.what}: {spec!r} is not callable",
                     "point to a function taking the request view")
            return None
        self.report.imports.append((self.line, self.what, spec))
        return fn


class Field:
    """How one field's value is read (see the module docstring)."""

    def parse(self, v: Any, at: At) -> Any:
        raise NotImplementedError


# -- field types ---------------------------------------------------------------------------


class Raw(Field):
    """Taken as written (the Limiter validates it)."""

    def parse(self, v: Any, at: At) -> Any:
        return v


class Num(Field):
    """A number checked by a :class:`_Number`."""

    def __init__(self, spec: _Number) -> None:
        self.spec = spec

    def parse(self, v: Any, at: At) -> Any:
        try:
            return self.spec.coerce(v)
        except ConfigError as exc:
            at.err(f"{at.what} {exc}", self.spec.hint())
            return None


class Int(Num):
    """A TOML integer from ``minimum`` to ``maximum``."""

    def __init__(self, minimum: int = 1, maximum: float = MAX_LIMIT) -> None:
        super().__init__(_Number(minimum, maximum, integer=True))


class Duration(Num):
    """Seconds (a number, or a string with a unit); default from 1 ms to ten years."""

    def __init__(self, spec: _Number = _DURATION_N) -> None:
        super().__init__(spec)


class Bool(Field):
    def parse(self, v: Any, at: At) -> Any:
        if not isinstance(v, bool):
            at.err(f"{at.what} must be true or false, got {type_name(v)} {v!r}",
                   "TOML booleans are lowercase and unquoted: true / false")
            return None
        return v


class Choice(Field):
    """One of a few strings."""

    def __init__(self, choices: Sequence[str], hint: str) -> None:
        self.choices = tuple(choices)
        self.hint = hint

    def parse(self, v: Any, at: At) -> Any:
        if v in self.choices:
            return v
        at.err(f"{at.what} must be one of {', '.join(map(repr, self.choices))}, got {v!r}",
               self.hint)
        return None


class Import(Field):
    """A dotted import path to a callable."""

    def __init__(self, hint: str) -> None:
        self.hint = hint  # when the value is not a string

    def parse(self, v: Any, at: At) -> Any:
        if isinstance(v, str):
            return at.callable(v)
        at.err(f"{at.what} must be a dotted import path", self.hint)
        return None


class IntOrImport(Int):
    """A whole number, or a dotted import path to a function computing it."""

    def parse(self, v: Any, at: At) -> Any:
        return at.callable(v) if isinstance(v, str) else super().parse(v, at)


class Strategy(Field):
    """An algorithm name this storage runs. Returns the value as written (``Rates`` checks
    itself against it), the error reported."""

    def parse(self, v: Any, at: At) -> Any:
        strategies = at.report.strategies
        if isinstance(v, str) and v in ALGORITHMS and v not in strategies:
            at.err(f"{at.label}: strategy {v!r} is not available on this storage",
                   f"this storage runs: {', '.join(strategies)}")
        elif not isinstance(v, str) or v not in strategies:
            mean = did_you_mean(str(v), strategies) if isinstance(v, str) else ""
            at.err(f"{at.label}: unknown strategy {v!r}",
                   (mean + " " if mean else "") + f"strategies: {', '.join(strategies)}")
        return v


_RATE_HINT = ('write "<count>/<period>" like "100/minute", "5/10 seconds", "1000 per day"; '
              'join several with ";"')


class Rates(Field):
    """``"100/minute; 20/second"`` (or a list of such strings), each rate in range, one per
    period, and runnable by the strategy and burst read before it."""

    def __init__(self, strategy_from: str = "strategy", burst_from: str = "burst") -> None:
        self.strategy_from = strategy_from
        self.burst_from = burst_from

    def parse(self, v: Any, at: At) -> Any:
        label = at.label
        if isinstance(v, dict):
            return self._plans(v, at)
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            bad = False
            for j, x in enumerate(v):  # each at its own line
                try:
                    coerce_rates(x)
                except ConfigError as exc:
                    bad = True
                    at.err(f"{label}: bad rate {x!r}: {exc}", _RATE_HINT, at.elements(j))
            if bad:
                return None
            v = "; ".join(v)
        if not isinstance(v, str):
            at.err(f"{label}: rates must be a string, got {type_name(v)} {v!r}",
                   'e.g. rates = "100/minute" or "100/minute; 20/second"')
            return None
        try:
            parsed = coerce_rates(v)
        except ConfigError as exc:
            at.err(f"{label}: bad rate {v!r}: {exc}", _RATE_HINT)
            return None
        for r in parsed:
            if r.limit > MAX_LIMIT or not _MIN_RATE_PERIOD <= r.period <= MAX_SECONDS:
                at.err(f"{label}: rate {v!r} out of range: a limit is at most {MAX_LIMIT}, "
                       f"a period from 1 second to {MAX_SECONDS / 86400:g} days", _RATE_HINT)
                return None
        periods = [r.period for r in parsed]
        if len(set(periods)) != len(periods):
            at.err(f"{label}: two rates with the same period in {v!r}",
                   "keep one rate per period (the tighter one)")
            return None
        strategy = at.values.get(self.strategy_from)
        if isinstance(strategy, str) and strategy in ALGORITHMS:
            for r in parsed:
                try:
                    make_algorithm(strategy, r, at.values.get(self.burst_from))
                except ConfigError as exc:
                    at.err(f"{label}: {exc}")
                    return None
        return v


    def _plans(self, v: dict[str, Any], at: At) -> Any:
        """A rates table: ``plan`` (``"header:<name>"`` or an import path), ``default``
        and ``plans`` (each plan's rates), read as ``Limiter.plans`` takes them."""
        label = at.label
        unknown = sorted(set(v) - {"plan", "default", "plans"})
        table, plan, default = v.get("plans"), v.get("plan"), v.get("default")
        if unknown or not isinstance(table, dict) or not table or not isinstance(plan, str):
            what = f"unknown field {unknown[0]!r} in" if unknown else "incomplete"
            at.err(f"{label}: {what} plans table (rates = {{...}})", _PLANS_HINT)
            return None
        rates: dict[str, Any] = {}
        for name, value in table.items():
            parsed = None if isinstance(value, dict) else self.parse(value, at)
            if parsed is None:
                if isinstance(value, dict):
                    at.err(f"{label}: plan {name!r}: rates must be a string", _PLANS_HINT)
                return None
            rates[name] = parsed
        source = plan if plan.lower().startswith("header:") else at.callable(plan)
        if source is None:
            return None
        try:
            return Plans(rates, source, default)
        except ConfigError as exc:
            at.err(f"{label}: {exc}", _PLANS_HINT)
            return None


_PLANS_HINT = ('[throttle.rates] takes plan = "header:X-Plan" (or "package.module:plan_of", '
               'a function of the request view), default = "free", and a table '
               '[throttle.rates.plans] of rates per plan: free = "100/hour"')
_KEY_NAMES = ("client", "ip", "global", "path", "user", "user_or_ip")
_KEY_HINT = ("one of 'client', 'ip', 'global', 'path', 'user', 'user_or_ip', "
             "'header:<name>', 'form:<field>', "
             "or a dotted import path 'package.module:function'")


class Key(Field):
    """What a rule counts per: a key name, ``header:<name>``, ``form:<field>`` or a dotted
    import path. ``shown``: what ``throttlekit rules`` shows when the field is absent."""

    def __init__(self, shown: str = "client") -> None:
        self.shown = shown

    def parse(self, v: Any, at: At) -> Any:
        label = at.label
        if not isinstance(v, str) or not v:
            at.err(f"{label}: key must be a string, got {type_name(v)} {v!r}", _KEY_HINT)
            return None
        if v in ("client", "ip", "user", "user_or_ip"):
            return v
        if v == "global":
            return _global_key
        if v == "path":
            return _path_key
        low = v.lower()
        if low.startswith("header:"):
            if not v[7:].strip():
                at.err(f"{label}: key {v!r} names no header", "e.g. header:X-Api-Key")
                return None
            return v
        if low.startswith("form:"):
            fld = v[5:].strip()
            if not fld:
                at.err(f"{label}: key {v!r} names no form field", "e.g. form:username")
                return None
            return _form_key(fld)
        if "." in v or ":" in v:
            return at.callable(v)
        mean = did_you_mean(v, _KEY_NAMES)
        at.err(f"{label}: unknown key name {v!r}",
               (mean + " " if mean else "") + "expected " + _KEY_HINT)
        return None


_STATUS_CLASS = re.compile(r"^[1-5]xx$")


class CountWhen(Field):
    """Which responses a throttle charges: statuses, classes (``"4xx"``) or an import path."""

    def parse(self, v: Any, at: At) -> Any:
        hint = ('count_when = [401, 403] (statuses), ["4xx", 500] (classes), or a dotted '
                'import path "myapp.rules:failed"')
        if isinstance(v, str) and ("." in v or ":" in v) and not _STATUS_CLASS.match(v):
            return at.callable(v)
        items = v if isinstance(v, list) else [v]
        exact: set[int] = set()
        classes: set[int] = set()
        for x in items:
            if isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599:
                exact.add(x)
            elif isinstance(x, str) and _STATUS_CLASS.match(x):
                classes.add(int(x[0]))
            else:
                at.err(f"{at.label}: bad count_when entry {x!r}", hint)
                return None
        frozen, cls = frozenset(exact), frozenset(classes)
        return lambda r: r.status_code in frozen or r.status_code // 100 in cls


class Escalate(Field):
    """A ban's escalation: ``true``, ``false``, or a table of ``factor``, ``max_ban`` and
    ``forget_after`` (durations) and ``jitter``; the ranges against ``bantime`` are the
    Limiter's to check."""

    _SPECS: ClassVar[dict[str, _Number]] = {
        "factor": _Number(1, 1000), "max_ban": _DURATION_N, "forget_after": _DURATION_N,
        "jitter": _Number(0, 1, below=True),
    }

    def parse(self, v: Any, at: At) -> Any:
        hint = ('escalate = true (each ban of a repeat offender twice the last, up to 64x), '
                'or escalate = { max_ban = "1d", forget_after = "7d", jitter = 0.1, '
                'factor = 2 }')
        if isinstance(v, bool):
            return v
        if not isinstance(v, dict):
            at.err(f"{at.what} must be true, false or a table, got {type_name(v)} {v!r}", hint)
            return None
        out: dict[str, float] = {}
        for name, value in v.items():
            spec = self._SPECS.get(name)
            if spec is None:
                mean = did_you_mean(str(name), list(self._SPECS))
                at.err(f"{at.what}: unknown option {name!r}" + (f"; {mean}" if mean else ""),
                       hint)
                return None
            try:
                out[name] = spec.coerce(value)
            except ConfigError as exc:
                at.err(f"{at.what}: {name} {exc}", spec.hint())
                return None
        return out


class Fractions(Field):
    """A non-empty list of increasing fractions in (0, 1] (shedding thresholds)."""

    def parse(self, v: Any, at: At) -> Any:
        ok = isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1 for x in v
        ) and all(a <= b for a, b in itertools.pairwise(v))
        if not ok:
            at.err(f"{at.what} must be a non-empty list of increasing fractions in (0, 1], "
                   f"got {v!r}",
                   "thresholds = [0.8, 1.0]: priority 0 is shed above 80% of capacity, "
                   "priority 1 only at 100%")
            return None
        return tuple(float(x) for x in v)


class TrustedProxies(Field):
    """A hop count, or the proxies' addresses and networks (and ``"unix"``)."""

    def parse(self, v: Any, at: At) -> Any:
        if not isinstance(v, list):
            return Num(_HOPS).parse(v, at)
        for j, e in enumerate(v):
            if e == "unix":
                continue
            try:
                if not isinstance(e, str):
                    raise ConfigError(f"not a string: {type_name(e)}")
                IPSet([e])
            except ConfigError as exc:
                at.err(f"{at.what}: bad address or CIDR {e!r}: {str(exc).split(': ', 1)[-1]}",
                       'a hop count (trusted_proxies = 1), or the proxies\' addresses and '
                       'networks: ["10.0.0.0/8", "unix"]', at.elements(j))
                return None
        return v


# -- small pieces --------------------------------------------------------------------------


def import_path(spec: str) -> Any:
    """The object a dotted path names: ``"pkg.mod:func"`` or ``"pkg.mod.func"``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r} is not a dotted import path")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def parse_duration(v: str | float) -> float:
    """Seconds from a duration as rules files write it: ``600``, ``"30s"``, ``"10m"``,
    ``"1h"``, ``"1d"``, ``"500ms"``, or with the unit's word: ``"10 minutes"``,
    ``"1 hour"``, ``"2 days"`` (singular or plural, any case; also ``"sec"``, ``"min"``,
    ``"hr"``, ``"w"``/``"week"``).

    Raises:
        ConfigError: not a finite duration from 1 ms to ten years.
    """
    try:
        seconds: float = _DURATION_N.coerce(v)
    except ConfigError as exc:
        raise ConfigError(f"bad duration {v!r}: {exc}; give seconds (600) or a number "
                          'with a unit: "500ms", "30s", "10m", "1h", "1d", "10 minutes"') from None
    return seconds


def type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _global_key(view: RequestView) -> str:
    return "*"


def _path_key(view: RequestView) -> str:
    return view.path


def _form_key(name: str) -> Callable[[RequestView], Any]:
    def form_key(view: RequestView) -> Any:
        return view.form.get(name) or None

    return form_key
