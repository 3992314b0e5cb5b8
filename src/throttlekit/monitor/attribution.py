"""Attribution: which dimension and values explain a surge.

For each dimension (see :mod:`throttlekit.monitor.dimensions`) the surge's *excess* is the
dimension's rate since the rise began minus its learnt baseline. A value is a culprit when
its rate rose at least ``factor`` times above its own baseline and by at least
``min_share`` of the excess; the culprits (the ``max_values`` largest rises) explain the
dimension's excess when they account for ``coverage`` of it while holding at most
``max_collateral`` of the dimension's normal traffic (their baselines: what a containment
on them would also hit). The client
dimension is read the shield's way instead: its culprits are the clients above
``client_factor`` times the per-client baseline (:meth:`Monitor.offenders`), as many as
there are, since a ban hits one client only.

Of the dimensions that explain the surge, the one with the least collateral wins, then the
one with the fewest values, then the narrowest (:data:`PRIORITY`). When none does, the
surge is attributed to everything (``dimension == "*"``): a flash crowd of new visitors,
each at a user's rate and spread like the usual traffic, is such a surge, and nothing
narrower should be contained (the excess is for admission control, not for bans).

**A surge shaped like the usual traffic.** Each explanation also measures its *skew*: how
far the dimension's excess is from being spread like its normal traffic (half the sum,
over its values, of the difference between the value's share of the excess and its share
of the baseline: 0 when every value rose in proportion, 1 when the excess went to values
normal traffic never had). When the ``path`` dimension's skew is below :data:`UNIFORM`
(the surge asks for the site's pages in their usual mix), culprits that normal traffic
already had (any collateral, however small) explain nothing: they are that traffic scaled
up. This is
the flash crowd's case: new visitors all send the header shape of a first visit (no
cookie yet), common in normal traffic, and while admission control sheds them they never
get a cookie, so that fingerprint's rate soars; containing it would throttle the crowd
(429) instead of letting admission shed the excess (503). A value normal traffic never
had (a bot's user agent, a header shape no browser sends) is still named.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import NamedTuple, TypedDict

from .._errors import ConfigError
from .dimensions import CLIENT, Dimension, ValueRate

__all__ = ["COVERAGE", "EVERYTHING", "MAX_VALUES", "PRIORITY", "UNIFORM", "Attribution",
           "AttributionOptions", "Culprit", "Explanation", "attribute", "check_options",
           "explain", "explain_clients"]

#: the dimension of a surge that nothing narrower explains
EVERYTHING = "*"
#: ties between dimensions go to the earliest here (the narrowest containment)
PRIORITY = ("client", "net24", "net16", "fingerprint", "user_agent", "path")
#: the share of a dimension's excess its culprits must account for, by default
COVERAGE = 0.6
#: the most culprits of a dimension other than the clients, by default
MAX_VALUES = 16
#: culprits listed per explanation (coverage counts them all)
MAX_LISTED = 50
#: collateral below this counts as none when dimensions are compared
_NO_COLLATERAL = 0.01
#: a path skew below this: the surge asks for the usual mix of pages (see the docstring)
UNIFORM = 0.25
#: the dimension whose skew says whether a surge is shaped like the usual traffic
_SHAPE = "path"


class AttributionOptions(TypedDict, total=False):
    """The tuning of :func:`attribute` (the defaults are :func:`attribute`'s)."""

    factor: float
    coverage: float
    max_values: int
    max_collateral: float
    min_share: float


class Culprit(NamedTuple):
    """A value that explains part of a surge.

    Attributes:
        value: the value (path, user agent, fingerprint, network or client key).
        rate: its requests per second since the rise began.
        baseline: its requests per second in normal traffic.
        share: the share of the dimension's excess it accounts for.
    """

    value: Hashable
    rate: float
    baseline: float
    share: float


class Explanation(NamedTuple):
    """What one dimension says about a surge.

    Attributes:
        dimension: the dimension's name.
        culprits: its culprits, largest excess first (at most :data:`MAX_LISTED`).
        culprit_count: how many culprits there are.
        excess: the dimension's rate above its baseline, requests per second.
        coverage: the share of ``excess`` the culprits account for.
        collateral: the share of the dimension's normal traffic inside the culprits.
        narrow: the culprits explain the surge (enough coverage, few enough values,
            little enough collateral).
        skew: how far the excess is from the dimension's normal mix, 0 to 1 (see the
            module docstring; 1 when there is no excess or no baseline to compare with).
    """

    dimension: str
    culprits: tuple[Culprit, ...]
    culprit_count: int
    excess: float
    coverage: float
    collateral: float
    narrow: bool
    skew: float = 1.0


class Attribution(NamedTuple):
    """Which dimension and values explain a surge.

    Attributes:
        dimension: the explaining dimension, or ``"*"`` when nothing narrower than
            everything explains it.
        culprits: that dimension's culprits (empty for ``"*"``; at most
            :data:`MAX_LISTED`).
        culprit_count: how many culprits there are.
        coverage: the share of the excess they account for.
        collateral: the share of that dimension's normal traffic inside them.
        since: the start of the lookback (when the rise began, whole buckets).
        at: when it was computed.
        explanations: every dimension's explanation, in :data:`PRIORITY` order, to show
            why the others lost.
    """

    dimension: str
    culprits: tuple[Culprit, ...]
    culprit_count: int
    coverage: float
    collateral: float
    since: float
    at: float
    explanations: tuple[Explanation, ...]

    @property
    def narrow(self) -> bool:
        """Something narrower than everything explains the surge."""
        return self.dimension != EVERYTHING

    def summary(self) -> str:
        """One line for a log: ``user_agent 'flood/1.0' (97% of the excess)``."""
        if not self.narrow:
            return "everything (no narrower dimension explains the surge)"
        values = ", ".join(repr(str(c.value)) for c in self.culprits[:3])
        if self.culprit_count > 3:
            values += f" and {self.culprit_count - 3} more"
        return f"{self.dimension} {values} ({self.coverage:.0%} of the excess)"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (values as strings, rates rounded)."""
        return {
            "dimension": self.dimension, "count": self.culprit_count,
            "coverage": round(self.coverage, 3),
            "collateral": round(self.collateral, 3), "since": self.since, "at": self.at,
            "culprits": _culprits(self.culprits),
            "explanations": [
                {"dimension": e.dimension, "count": e.culprit_count, "excess": round(e.excess, 3),
                 "coverage": round(e.coverage, 3), "collateral": round(e.collateral, 3),
                 "narrow": e.narrow, "skew": round(e.skew, 3),
                 "culprits": _culprits(e.culprits[:10])}
                for e in self.explanations
            ],
        }


def _culprits(culprits: Iterable[Culprit]) -> list[dict[str, object]]:
    return [{"value": str(c.value), "rate": round(c.rate, 3), "baseline": round(c.baseline, 3),
             "share": round(c.share, 3)} for c in culprits]


def check_options(options: AttributionOptions) -> None:
    """ConfigError for an unknown option or one out of range."""
    unknown = set(options) - set(AttributionOptions.__annotations__)
    if unknown:
        raise ConfigError(f"unknown attribution option(s): {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(AttributionOptions.__annotations__)}")
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"attribution option {name} must be a number, got {value!r}")
    if options.get("factor", 3.0) <= 1:
        raise ConfigError(f"attribution factor must be above 1, got {options['factor']!r}")
    for name in ("coverage", "max_collateral", "min_share"):
        if name in options and not 0 < options[name] <= 1:  # type: ignore[literal-required]
            raise ConfigError(f"attribution option {name} must be in (0, 1], "
                              f"got {options[name]!r}")  # type: ignore[literal-required]
    max_values = options.get("max_values", MAX_VALUES)
    if not isinstance(max_values, int) or max_values < 1:
        raise ConfigError(f"attribution max_values must be a positive integer, got {max_values!r}")


def explain(
    dimension: Dimension,
    now: float,
    since: float | None,
    *,
    factor: float = 3.0,
    coverage: float = COVERAGE,
    max_values: int = MAX_VALUES,
    max_collateral: float = 0.25,
    min_share: float = 0.02,
) -> Explanation:
    """What ``dimension`` says about the surge from ``since`` to ``now``."""
    excess = dimension.rate(now, since) - dimension.baseline
    rows = dimension.rates(now, since) if excess > 0 else []
    rows.sort(key=lambda r: r.rate - r.baseline, reverse=True)
    culprits: list[Culprit] = []
    covered = inside = 0.0
    for r in rows:
        rise = r.rate - r.baseline
        if rise < min_share * excess or len(culprits) >= max_values:
            break  # what is left is too small, or too many values were needed
        if r.rate < factor * r.baseline:
            continue  # large but normal: it did not rise against its own baseline
        culprits.append(Culprit(r.value, r.rate, r.baseline, rise / excess))
        covered += rise
        inside += r.baseline
    found = _explanation(dimension, culprits, excess, covered, inside, coverage, max_collateral)
    return found._replace(skew=skew(rows, excess, dimension.baseline))


def skew(rows: Iterable[ValueRate], excess: float, baseline: float) -> float:
    """How far ``excess`` (requests per second above ``baseline``) is spread unlike the
    baseline over the values of ``rows``: half the sum of the differences between each
    value's share of the excess and its share of the baseline (the total variation
    distance; values outside ``rows`` count as rising in proportion). 1 without an excess
    or a baseline."""
    if excess <= 0 or baseline <= 0:
        return 1.0
    total = 0.0
    for r in rows:
        total += abs((r.rate - r.baseline) / excess - r.baseline / baseline)
    return min(1.0, total / 2)


def explain_clients(
    dimension: Dimension, offenders: list[ValueRate], now: float, since: float | None,
    per_client: float, coverage: float = COVERAGE,
) -> Explanation:
    """The client dimension's explanation: ``offenders`` (clients far above the
    per-client baseline ``per_client``, requests per second) as its culprits."""
    excess = dimension.rate(now, since) - dimension.baseline
    culprits: list[Culprit] = []
    covered = 0.0
    for r in offenders:
        rise = max(0.0, r.rate - per_client)
        culprits.append(Culprit(r.value, r.rate, per_client, rise / excess if excess > 0 else 0.0))
        covered += rise
    return _explanation(dimension, culprits, excess, covered, 0.0, coverage, 1.0)


def _explanation(dimension: Dimension, culprits: list[Culprit], excess: float,
                 covered: float, inside: float, coverage: float,
                 max_collateral: float) -> Explanation:
    share = covered / excess if excess > 0 else 0.0
    collateral = inside / dimension.baseline if dimension.baseline > 0 else 0.0
    narrow = bool(culprits) and share >= coverage and collateral <= max_collateral
    return Explanation(dimension.name, tuple(culprits[:MAX_LISTED]), len(culprits), excess,
                       share, collateral, narrow)


def attribute(explanations: Iterable[Explanation], since: float, now: float) -> Attribution:
    """The attribution the explanations make: the best narrow one, or everything."""
    ordered = sorted(explanations, key=lambda e: _rank(e.dimension))
    usual = any(e.dimension == _SHAPE and e.skew < UNIFORM for e in ordered)
    # shaped like the usual traffic: a value normal traffic had is that traffic scaled up
    narrow = [e for e in ordered if e.narrow and not (
        usual and e.dimension != CLIENT and e.collateral > 0)]
    if not narrow:
        return Attribution(EVERYTHING, (), 0, 0.0, 0.0, since, now, tuple(ordered))
    best = min(narrow, key=lambda e: (
        e.collateral > _NO_COLLATERAL,
        1 if e.dimension == CLIENT else e.culprit_count,  # a ban hits one client: count is no cost
        e.collateral,
        _rank(e.dimension),
    ))
    return Attribution(best.dimension, best.culprits, best.culprit_count, best.coverage,
                       best.collateral, since, now, tuple(ordered))


def _rank(dimension: str) -> int:
    return PRIORITY.index(dimension) if dimension in PRIORITY else len(PRIORITY)
