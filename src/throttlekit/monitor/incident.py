"""Incident reports: what happened during an anomaly on all traffic, built when it ends.

::

    incidents = Incidents(monitor, shield=shield, limiter=limiter)
    incidents.on_incident(lambda report: print(report.markdown()))
    incidents.latest.as_dict()          # the last report, JSON-ready

A report holds a timeline (the rise, its detection, each attribution, each shield action
and admission change, the end), the dimension that explained the surge, every action with
the requests it refused, the top offenders, and the traffic served during the incident
against before it. It is built from what the monitor already counts: once per bucket
(the monitor's tick) the recorder copies the counters, and during an incident it reads the
shield, the attribution and the admission limit; a request pays nothing for it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from .._errors import ConfigError
from ._containment import Containment
from ._monitor import ALL, Anomaly, Monitor
from .attribution import Attribution
from .shield import Shield

__all__ = ["REFUSALS", "IncidentCallback", "IncidentReport", "Incidents", "render_markdown"]

logger = logging.getLogger("throttlekit.monitor")

#: event kinds that refuse a request
REFUSALS = ("throttled", "blocked", "banned", "shed", "challenged")
#: the rule of the dynamic blocklist (the shield's bans), and of admission control
_BLOCKLIST, _ADMISSION = "blocklist", "admission"
_HISTORY = 300  # per-bucket samples kept (5 minutes at the default bucket)
_BEFORE = 60.0  # seconds of traffic before the rise that "before" is measured over
_MAX_TIMELINE = 200
_MAX_OFFENDERS = 1000

Counts = dict[tuple[str, str, bool], int]


class _Sample(NamedTuple):
    at: float
    requests: int
    counts: Counts


class IncidentReport(NamedTuple):
    """One incident, from the rise to the end. ``as_dict()`` is its JSON form,
    ``markdown()`` the same for people."""

    started_at: float
    detected_at: float
    ended_at: float
    peak_rate: float
    baseline: float
    dimension: str | None
    attribution: dict[str, Any] | None
    timeline: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    refused: dict[str, int]
    offenders: list[dict[str, Any]]
    served: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "detected_at": self.detected_at,
                "ended_at": self.ended_at, "duration": round(self.ended_at - self.started_at, 3),
                "peak_rate": round(self.peak_rate, 3), "baseline": round(self.baseline, 3),
                "dimension": self.dimension, "attribution": self.attribution,
                "timeline": self.timeline, "actions": self.actions, "refused": self.refused,
                "offenders": self.offenders, "served": self.served}

    def markdown(self) -> str:
        return render_markdown(self.as_dict())


IncidentCallback = Callable[[IncidentReport], object]


def _delta(after: Counts, before: Counts) -> Counts:
    return {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}


def _refused(counts: Counts) -> int:
    return sum(n for (_, kind, dry), n in counts.items() if kind in REFUSALS and not dry)


class _Open:
    """The incident being recorded."""

    def __init__(self, anomaly: Anomaly, start: _Sample, before: dict[str, Any]) -> None:
        self.anomaly = anomaly
        self.start = start
        self.before = before
        self.timeline: list[dict[str, Any]] = []
        self.dropped = 0
        self.offenders: dict[str, int] = {}
        self.offenders_at = anomaly.started_at
        self.explained: tuple[str, tuple[str, ...]] | None = None
        #: the first attribution that explained the surge (what was acted on), else the last
        self.found: Attribution | None = None
        self.limit: int | None = None
        self.shed = 0
        self.shedding = False
        #: what the shield contained during the incident (it lifts it at the end)
        self.held: dict[tuple[str, str], Containment] = {}

    def add(self, at: float, kind: str, text: str, **data: Any) -> None:
        if len(self.timeline) >= _MAX_TIMELINE:
            self.dropped += 1
            return
        self.timeline.append({"at": at, "kind": kind, "text": text, **data})

    def count_offenders(self, counts: dict[Hashable, int]) -> None:
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:50]:
            self.offenders[str(key)] = self.offenders.get(str(key), 0) + n
        if len(self.offenders) > _MAX_OFFENDERS:
            kept = sorted(self.offenders.items(), key=lambda kv: -kv[1])[:_MAX_OFFENDERS // 2]
            self.offenders = dict(kept)


class Incidents:
    """Records each anomaly on all traffic and builds its :class:`IncidentReport` when
    it ends.

    Args:
        monitor: the Monitor (the recorder hooks its anomalies, ticks and snapshot).
        shield: the Shield, if any: its bans, containments and tightened rules are the
            report's actions (its containment is read once per bucket, since the
            shield lifts it when the anomaly ends).
        limiter: the Limiter, if any: its admission limit (``limiter.admission``) is
            followed during the incident.
        keep: reports kept (:attr:`reports`, newest last; default 10).
        containment_rule: the rule name the shield contains values with (the Shield's
            ``rule``, default ``"shield"``).
    """

    def __init__(self, monitor: Monitor, *, shield: Shield | None = None, limiter: Any = None,
                 keep: int = 10, containment_rule: str = "shield") -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep must be a positive integer, got {keep!r}")
        self.monitor = monitor
        self.shield = shield
        self.limiter = limiter if limiter is not None else monitor.limiter
        self.containment_rule = containment_rule
        #: the last ``keep`` reports, oldest first
        self.reports: deque[IncidentReport] = deque(maxlen=keep)
        self._callbacks: list[IncidentCallback] = []
        self._samples: deque[_Sample] = deque(maxlen=_HISTORY)
        self._open: _Open | None = None
        monitor.on_tick(self._on_tick)
        monitor.on_anomaly(self._on_anomaly)
        monitor.on_snapshot(self._section)

    @property
    def latest(self) -> IncidentReport | None:
        """The last report, None before the first incident ended."""
        return self.reports[-1] if self.reports else None

    @property
    def open(self) -> bool:
        """True while an incident is being recorded."""
        return self._open is not None

    def on_incident(self, callback: IncidentCallback) -> IncidentCallback:
        """Call ``callback(report)`` when an incident ends; returns it (a decorator)."""
        if not callable(callback):
            raise ConfigError(f"an incident callback must be callable, got {callback!r}")
        self._callbacks.append(callback)
        return callback

    # -- recording ----------------------------------------------------------------------

    def _sample(self, now: float) -> _Sample:
        return _Sample(now, self.monitor.requests, self.monitor.counts())

    def _on_tick(self, now: float) -> None:
        self._samples.append(self._sample(now))
        inc = self._open
        if inc is not None:
            self._follow(inc, now)

    def _on_anomaly(self, anomaly: Anomaly) -> None:
        if anomaly.scope != ALL:
            return
        if anomaly.kind == "anomaly_started" and self._open is None:
            self._begin(anomaly)
        elif anomaly.kind == "anomaly_ended" and self._open is not None:
            inc, self._open = self._open, None
            try:
                report = self._finish(inc, anomaly)
            except Exception:
                logger.exception("building the incident report failed")
                return
            self.reports.append(report)
            for callback in self._callbacks:
                try:
                    callback(report)
                except Exception:
                    logger.exception("incident callback %r failed", callback)

    def _begin(self, anomaly: Anomaly) -> None:
        rise = anomaly.started_at
        start = next((s for s in reversed(self._samples) if s.at <= rise), None)
        if start is None:
            start = self._sample(anomaly.at)
        first = next((s for s in self._samples if s.at >= rise - _BEFORE), start)
        if first.at > start.at:  # no tick in the minute before the rise
            first = start
        span = start.at - first.at
        requests = start.requests - first.requests
        served = requests - _refused(_delta(start.counts, first.counts))
        before = {"seconds": round(span, 3), "requests": requests, "served": served,
                  "served_rate": round(served / span, 3) if span > 0 else None}
        inc = self._open = _Open(anomaly, start, before)
        inc.add(rise, "rise", f"traffic rose above {anomaly.baseline:.1f} req/s baseline")
        inc.add(anomaly.at, "detected",
                f"anomaly detected: {anomaly.rate:.1f} req/s against a baseline of "
                f"{anomaly.baseline:.1f} req/s", rate=round(anomaly.rate, 3))
        inc.count_offenders(dict(anomaly.top))
        inc.offenders_at = anomaly.at
        self._attribution(inc, anomaly.at)
        shield = self.shield
        if shield is not None and ALL in shield.scopes:
            verb = "would tighten" if shield.dry_run else "tightened"
            inc.add(anomaly.at, "shield", "shield engaged" + (" (dry run)" if shield.dry_run
                                                               else ""))
            for rule, rates in shield.tighten.items():
                inc.add(anomaly.at, "tighten", f"{verb} rule {rule} to {rates}", rule=rule)
        self._admission(inc, anomaly.at)

    def _follow(self, inc: _Open, now: float) -> None:
        """Once per bucket during an incident: attribution, admission, offenders."""
        self._attribution(inc, now)
        self._admission(inc, now)
        self._containment(inc)
        if now - inc.offenders_at >= self.monitor.window:
            inc.count_offenders(self.monitor.client_counts(now, inc.offenders_at))
            inc.offenders_at = now

    def _attribution(self, inc: _Open, now: float) -> None:
        found = self.monitor.attribution
        if found is None:
            return
        if inc.found is None or not inc.found.narrow:
            inc.found = found
        explained = (found.dimension, tuple(str(c.value) for c in found.culprits))
        if explained != inc.explained:  # a new dimension or values, not new percentages
            inc.explained = explained
            inc.add(now, "attribution", f"explained by {found.summary()}",
                    dimension=found.dimension)

    def _containment(self, inc: _Open) -> None:
        if self.shield is not None:
            for c in self.shield.containment():
                if c.since >= inc.anomaly.at:
                    inc.held.setdefault((c.dimension, c.value), c)

    def _admission(self, inc: _Open, now: float) -> None:
        step = getattr(getattr(self.limiter, "engine", None), "admission", None)
        if step is None:
            return
        snap = step.snapshot()
        shed = sum(snap.shed)
        last = inc.limit
        if last is None:
            inc.shed = shed  # shed before the incident is not this incident's
        shedding, inc.shed = shed > inc.shed, shed
        if last is None or abs(snap.limit - last) >= max(1, last // 5):
            inc.limit = snap.limit
            inc.add(now, "admission", f"admission limit {snap.limit} ({snap.inflight} in "
                    "flight)", limit=snap.limit, inflight=snap.inflight)
        if shedding != inc.shedding:
            inc.shedding = shedding
            inc.add(now, "admission", "admission control shedding" if shedding
                    else "admission control no longer shedding", shed=shed)

    # -- the report ---------------------------------------------------------------------

    def _finish(self, inc: _Open, anomaly: Anomaly) -> IncidentReport:
        now = anomaly.at
        inc.count_offenders(self.monitor.client_counts(now, inc.offenders_at))
        self._attribution(inc, now)
        self._containment(inc)
        actions = self._shield_actions(inc, now)
        end = self._sample(now)
        delta = _delta(end.counts, inc.start.counts)
        refused_by: dict[str, int] = {}
        for (rule, kind, dry), n in sorted(delta.items()):
            if kind in REFUSALS and not dry:
                refused_by[f"{rule} {kind}"] = n
        for action in actions:
            action["refused"] = sum(delta.get((r, k, False), 0) for r, k in action.pop("by"))
        self._admission_action(actions, delta)
        inc.add(now, "end", f"anomaly over: {anomaly.rate:.1f} req/s against a baseline of "
                f"{anomaly.baseline:.1f} req/s")
        if inc.dropped:
            inc.add(now, "note", f"{inc.dropped} more timeline entries left out")
        inc.timeline.sort(key=lambda e: e["at"])
        span = max(now - inc.start.at, 1e-9)
        requests = end.requests - inc.start.requests
        refused = _refused(delta)
        served = {"before": inc.before, "during": {
            "seconds": round(span, 3), "requests": requests, "refused": refused,
            "served": requests - refused, "served_rate": round((requests - refused) / span, 3)}}
        banned = set() if self.shield is None else {str(k) for k in self.shield.banned}
        top = sorted(inc.offenders.items(), key=lambda kv: -kv[1])[: self.monitor.top_n]
        found = inc.found or anomaly.attribution
        return IncidentReport(
            inc.anomaly.started_at, inc.anomaly.at, now, inc.anomaly.rate,
            inc.anomaly.baseline, None if found is None else found.dimension,
            None if found is None else found.as_dict(), inc.timeline, actions, refused_by,
            [{"key": k, "requests": n, "banned": k in banned} for k, n in top], served,
        )

    def _shield_actions(self, inc: _Open, now: float) -> list[dict[str, Any]]:
        """The shield's actions since detection, on the timeline and as a list (each with
        the (rule, kind) counters of what it refused, ``by``)."""
        shield = self.shield
        if shield is None:
            return []
        verb = "would " if shield.dry_run else ""
        actions: list[dict[str, Any]] = []
        bans: dict[float, int] = {}
        for at in shield.banned.values():
            if at >= inc.anomaly.at:
                bans[at] = bans.get(at, 0) + 1
        for at, n in sorted(bans.items()):
            inc.add(at, "ban", f"{verb}ban{'' if verb else 'ned'} {n} client{'s' * (n != 1)}",
                    clients=n)
        if bans:
            actions.append({"action": "ban", "at": min(bans), "what": f"{sum(bans.values())} "
                            "clients banned", "by": [(_BLOCKLIST, "blocked")]})
        held = sorted(inc.held.values(), key=lambda c: c.since)
        for c in held:
            inc.add(c.since, "contain", f"{verb}throttle{'' if verb else 'd'} {c.dimension} "
                    f"{c.value!r} to {c.allowance:.2f} req/s: {c.reason}",
                    dimension=c.dimension, value=c.value)
        if held:
            actions.append({"action": "contain", "at": min(c.since for c in held),
                            "what": ", ".join(f"{c.dimension} {c.value!r}" for c in held),
                            "by": [(self.containment_rule, "throttled")]})
        for rule, rates in shield.tighten.items():
            actions.append({"action": "tighten", "at": inc.anomaly.at,
                            "what": f"rule {rule} to {rates}", "by": [(rule, "throttled")]})
        if ALL in shield.scopes:
            inc.add(now, "shield", "shield released: containment lifted, rules restored")
        return actions

    @staticmethod
    def _admission_action(actions: list[dict[str, Any]], delta: Counts) -> None:
        shed = delta.get((_ADMISSION, "shed", False), 0)
        if shed:
            actions.append({"action": "shed", "at": None, "what": "admission control (503)",
                            "refused": shed})
        for (rule, kind, dry), n in sorted(delta.items()):
            if kind == "challenged" and not dry:
                actions.append({"action": "challenge", "at": None, "what": f"rule {rule}",
                                "refused": n})

    def _section(self, now: float) -> dict[str, Any]:
        """The status document's part: the recent incidents, newest first, in short."""
        return {"incidents": [_brief(r) for r in reversed(self.reports)],
                "incident_open": self._open is not None}


def _brief(report: IncidentReport) -> dict[str, Any]:
    return {"started_at": report.started_at, "ended_at": report.ended_at,
            "peak_rate": round(report.peak_rate, 3), "dimension": report.dimension,
            "actions": len(report.actions), "refused": sum(report.refused.values())}


def _when(at: float | None, origin: float) -> str:
    return "" if at is None else f"+{at - origin:.1f}s"


def render_markdown(report: dict[str, Any]) -> str:
    """A report (:meth:`IncidentReport.as_dict`, or the JSON the status endpoint serves)
    as Markdown. Values come from traffic (user agents, paths): they are quoted as code."""
    t0 = report["started_at"]
    found = report.get("attribution") or {}
    lines = [f"# Incident: {report['peak_rate']:.1f} req/s against a baseline of "
             f"{report['baseline']:.1f} req/s",
             "", f"- started at {t0:.3f} (epoch seconds), detected "
             f"{_when(report['detected_at'], t0)}, over {_when(report['ended_at'], t0)}",
             f"- explained by: {_code(report.get('dimension') or '-')}"
             + (f" ({found.get('coverage', 0):.0%} of the excess)" if found else "")]
    for c in found.get("culprits", [])[:10]:
        lines.append(f"  - {_code(c['value'])}: {c['rate']:.1f} req/s (baseline "
                     f"{c['baseline']:.2f})")
    lines += ["", "## Timeline", "", "| when | what |", "|---|---|"]
    lines += [f"| {_when(e['at'], t0)} | {_cell(e['text'])} |" for e in report["timeline"]]
    lines += ["", "## Actions and their effect", ""]
    if report["actions"]:
        lines += ["| action | what | from | requests refused |", "|---|---|---|---|"]
        lines += [f"| {a['action']} | {_cell(a['what'])} | {_when(a['at'], t0)} | "
                  f"{a['refused']} |" for a in report["actions"]]
    else:
        lines.append("No action was taken.")
    lines += ["", "Requests refused during the incident, by rule: " + (", ".join(
        f"{_code(k)} {n}" for k, n in report["refused"].items()) or "none") + ".",
        "", "## Top offenders", "", "| client | requests | banned |", "|---|---|---|"]
    lines += [f"| {_code(o['key'])} | {o['requests']} | {'yes' if o['banned'] else 'no'} |"
              for o in report["offenders"]]
    before, during = report["served"]["before"], report["served"]["during"]
    lines += ["", "## Traffic served", "",
              f"- before (last {before['seconds']:.0f}s): {before['served']} requests served"
              + (f", {before['served_rate']:.1f}/s" if before["served_rate"] is not None
                 else ""),
              f"- during ({during['seconds']:.0f}s): {during['served']} of "
              f"{during['requests']} requests served, {during['served_rate']:.1f}/s; "
              f"{during['refused']} refused", ""]
    return "\n".join(lines)


def _code(value: object) -> str:
    text = str(value).replace("\n", " ").replace("`", "'").replace("|", "\\|")
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")
