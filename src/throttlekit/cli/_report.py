"""What ``throttlekit simulate`` measured, and the report: text, JSON and plot.

Each run (unprotected, protected) is a :class:`RunStats`: every request's outcome, by
label: ``answered`` (by the app, within the client's timeout), ``late`` (by the app, after
it), ``dropped`` (by the server, its queue full), or what throttlekit stopped it with
before the app: its status (``429``, ``403``, ``503``) or ``challenge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from ._server import ServerSpec

if TYPE_CHECKING:
    from ._server import Job
    from .scenarios import Scenario

__all__ = ["PROTECTIONS", "RunStats", "SimResult", "format_report", "plot"]

#: outcomes at the server; every other label is a stop before the app
SERVED = ("answered", "late", "dropped")
#: the protections a protected run can have, in the order the report names them
PROTECTIONS = ("rules", "shield", "admission", "standing", "challenges")
#: the stops in the order the report lists them
STOPS = ("429", "403", "503", "challenge")


class RunStats:
    """One run's outcomes. Timeline rows, per simulated second of the request's sending:
    legitimate admitted, legitimate stopped, attack admitted, attack stopped (by
    throttlekit), legitimate answered within the timeout."""

    def __init__(self, groups: list[str], timeout: float, duration: float,
                 workers: int | None) -> None:
        self.groups = groups
        self.timeout = timeout
        self.duration = duration
        self.workers = workers
        #: [requests, answered in time] per client group
        self.per_group = [[0, 0] for _ in groups]
        #: outcomes by label, legitimate requests and attack requests
        self.legit: dict[str, int] = dict.fromkeys(SERVED, 0)
        self.attack: dict[str, int] = dict.fromkeys(SERVED, 0)
        #: seconds from sending to the app's answer, legitimate requests (late ones too)
        self.latencies: list[float] = []
        #: worker-seconds spent within the scenario's duration
        self.busy = 0.0
        self.timeline = [[0, 0, 0, 0, 0] for _ in range(math.ceil(duration))]

    # -- recording (called by the server model and the replay, per request) -----------

    def _row(self, t: float) -> list[int]:
        timeline = self.timeline
        second = int(t)
        while len(timeline) <= second:
            timeline.append([0, 0, 0, 0, 0])
        return timeline[second]

    def on_stopped(self, job: Job, label: str) -> None:
        """Refused, shed or challenged before the app."""
        counts = self.legit if job.legitimate else self.attack
        counts[label] = counts.get(label, 0) + 1
        self.per_group[job.group][0] += 1
        self._row(job.arrival)[1 if job.legitimate else 3] += 1

    def on_admitted(self, job: Job) -> None:
        try:
            self.timeline[int(job.arrival)][0 if job.legitimate else 2] += 1
        except IndexError:
            self._row(job.arrival)[0 if job.legitimate else 2] += 1

    def on_answered(self, job: Job, latency: float) -> None:
        group = self.per_group[job.group]
        group[0] += 1
        if not job.legitimate:
            self.attack["answered" if latency <= self.timeout else "late"] += 1
            return
        self.latencies.append(latency)
        if latency <= self.timeout:
            self.legit["answered"] += 1
            group[1] += 1
            self._row(job.arrival)[4] += 1
        else:
            self.legit["late"] += 1

    def on_dropped(self, job: Job) -> None:
        (self.legit if job.legitimate else self.attack)["dropped"] += 1
        self.per_group[job.group][0] += 1

    # -- figures ----------------------------------------------------------------------

    def requests(self, legitimate: bool) -> int:
        return sum((self.legit if legitimate else self.attack).values())

    def share(self, legitimate: bool, *labels: str) -> float:
        """The share of requests with one of ``labels`` (0 without requests)."""
        counts = self.legit if legitimate else self.attack
        total = sum(counts.values())
        return sum(counts.get(k, 0) for k in labels) / total if total else 0.0

    def stops(self, legitimate: bool) -> dict[str, int]:
        """Requests stopped before the app, by label."""
        counts = self.legit if legitimate else self.attack
        return {k: v for k, v in counts.items() if k not in SERVED}

    def admitted_answered(self) -> float | None:
        """The share of the legitimate requests throttlekit let through that the app
        answered within the timeout (None: none let through)."""
        legit = self.legit
        admitted = legit["answered"] + legit["late"] + legit["dropped"]
        return legit["answered"] / admitted if admitted else None

    def stopped_share(self, legitimate: bool) -> float:
        return self.share(legitimate, *self.stops(legitimate))

    def latency(self, q: float) -> float | None:
        """The ``q`` quantile of the legitimate requests' latency (None: none answered)."""
        found = self.latencies
        if not found:
            return None
        found.sort()
        return found[min(len(found) - 1, int(q * len(found)))]

    @property
    def utilisation(self) -> float | None:
        """Busy worker time over the run (None: unlimited workers)."""
        if not self.workers:
            return None
        return self.busy / (self.workers * self.duration)

    def answered_between(self, start: float, end: float) -> float | None:
        """The share of legitimate requests sent from ``start`` to ``end`` (whole
        seconds) answered within the timeout (None: none sent)."""
        rows = self.timeline[int(start):math.ceil(end)]
        sent = sum(row[0] + row[1] for row in rows)
        return sum(row[4] for row in rows) / sent if sent else None

    def group_share(self, index: int) -> float:
        total, answered = self.per_group[index]
        return answered / total if total else 0.0

    def as_dict(self, legitimate_groups: list[int],
                attack: tuple[float, float] | None) -> dict[str, Any]:
        p50, p99 = self.latency(0.5), self.latency(0.99)
        return {
            "legitimate": {
                "requests": self.requests(True),
                "answered_share": round(self.share(True, "answered"), 6),
                "answered_share_during_attack":
                    _round(self.answered_between(*attack)) if attack else None,
                "admitted_answered_share": _round(self.admitted_answered()),
                "outcomes": {k: v for k, v in sorted(self.legit.items()) if v},
                "latency_s": {"p50": _round(p50), "p99": _round(p99)},
                "groups": {self.groups[i]: {"requests": self.per_group[i][0],
                                            "answered_share": round(self.group_share(i), 6)}
                           for i in legitimate_groups},
            },
            "attack": {
                "requests": self.requests(False),
                "stopped_share": round(self.stopped_share(False), 6),
                "outcomes": {k: v for k, v in sorted(self.attack.items()) if v},
            },
            "utilisation": _round(self.utilisation),
            "timeline": self.timeline,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


@dataclass
class SimResult:
    """What a simulation measured.

    The first fields are throttlekit's view of the protected run, per request: admitted
    (``legit_served``) or refused before the app; ``protected`` and ``unprotected`` what
    became of the same traffic at the server, with throttlekit and without.
    """

    scenario: str
    storage: str
    shield: bool
    duration: float
    legit_total: int = 0
    legit_served: int = 0
    attack_total: int = 0
    attack_refused: int = 0
    attack_start: float | None = None
    attack_end: float | None = None
    #: simulated seconds from the start of the run to each anomaly_started on all traffic
    detections: list[float] = field(default_factory=list)
    banned: int = 0
    legit_banned: list[str] = field(default_factory=list)
    #: wall-clock seconds the middleware added per request (sorted)
    added: list[float] = field(default_factory=list)
    #: per simulated second: [legit served, legit refused, attack served, attack refused]
    timeline: list[list[int]] = field(default_factory=list)
    wall_seconds: float = 0.0
    server: ServerSpec = field(default_factory=ServerSpec)
    protected: RunStats | None = None
    unprotected: RunStats | None = None
    #: indexes of the legitimate client groups, with more than one: reported each
    legit_groups: list[int] = field(default_factory=list)
    #: the protections on in the protected run (``simulate.PROTECTIONS``)
    protections: list[str] = field(default_factory=lambda: ["rules", "shield"])
    #: clients with standing when the first anomaly began (None: standing off)
    known_at_anomaly: int | None = None
    #: values the shield contained, by dimension (its containment counters)
    contained: dict[str, int] = field(default_factory=dict)

    def measured(self, protected: RunStats, unprotected: RunStats | None) -> None:
        """Take the runs' outcomes, and throttlekit's view of the protected one."""
        self.protected, self.unprotected = protected, unprotected
        self.legit_total = protected.requests(True)
        self.legit_served = self.legit_total - sum(protected.stops(True).values())
        self.attack_total = protected.requests(False)
        self.attack_refused = sum(protected.stops(False).values())
        self.timeline = [row[:4] for row in protected.timeline]

    @property
    def legit_served_share(self) -> float:
        return self.legit_served / self.legit_total if self.legit_total else 1.0

    @property
    def attack_refused_share(self) -> float:
        return self.attack_refused / self.attack_total if self.attack_total else 1.0

    @property
    def detected_after(self) -> float | None:
        """Simulated seconds from the attack's start to its detection (None: not detected)."""
        if self.attack_start is None:
            return None
        for t in self.detections:
            if t >= self.attack_start:
                return t - self.attack_start
        return None

    @property
    def false_alarms(self) -> int:
        """Anomalies raised before any attack."""
        start = math.inf if self.attack_start is None else self.attack_start
        return sum(1 for t in self.detections if t < start)

    def latency(self, q: float) -> float:
        """The ``q`` quantile of the added latency, seconds."""
        if not self.added:
            return 0.0
        return self.added[min(len(self.added) - 1, int(q * len(self.added)))]

    @property
    def attack_window(self) -> tuple[float, float] | None:
        """``(start, end)`` of the attack in this run; None without one (also when
        ``--duration`` ends the run before the attack starts)."""
        if self.attack_start is None or self.attack_end is None or (
            self.attack_start >= self.attack_end
        ):
            return None
        return self.attack_start, self.attack_end

    def as_dict(self) -> dict[str, Any]:
        window = self.attack_window
        runs = {
            name: run.as_dict(self.legit_groups, window) if run is not None else None
            for name, run in (("unprotected", self.unprotected), ("protected", self.protected))
        }
        return {
            "scenario": self.scenario,
            "storage": self.storage,
            "shield": self.shield,
            "protections": self.protections,
            "simulated_seconds": self.duration,
            "wall_seconds": round(self.wall_seconds, 3),
            "server": self.server.as_dict(),
            **runs,
            "legitimate": {
                "requests": self.legit_total, "served": self.legit_served,
                "served_share": round(self.legit_served_share, 6),
            },
            "attack": {
                "requests": self.attack_total, "refused": self.attack_refused,
                "refused_share": round(self.attack_refused_share, 6),
                "start": self.attack_start, "end": self.attack_end,
            },
            "anomaly": {
                "detected_after": self.detected_after,
                "detections": self.detections,
                "false_alarms": self.false_alarms,
            },
            "shield_bans": {"total": self.banned, "legitimate": self.legit_banned},
            "contained": self.contained,
            "known_at_anomaly": self.known_at_anomaly,
            "added_latency_us": {
                "median": round(self.latency(0.5) * 1e6, 2),
                "p99": round(self.latency(0.99) * 1e6, 2),
            },
            "timeline": self.timeline,
        }


# -- the text report ------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _side_by_side(r: SimResult) -> list[str]:
    """The two runs' figures, one line each, unprotected then protected."""
    runs = [r.unprotected, r.protected]
    timeout = r.server.timeout

    def row(label: str, cell: Any) -> str:
        cells = [cell(run) if run is not None else "-" for run in runs]
        return f"{label:40s}{cells[0]:>18s}{cells[1]:>18s}"

    lines = [
        row("", lambda s: "unprotected" if s is r.unprotected else "protected"),
        f"{'':40s}{'':>18s}{_protections(r):>18s}",
        row(f"legitimate answered within {timeout:g} s", lambda s: _pct(s.share(True, "answered"))),
    ]
    window = r.attack_window
    if window is not None:
        lines.append(row(f"  sent during the attack ({window[0]:g}-{window[1]:g} s)",
                         lambda s: _pct(s.answered_between(*window))))
    for i in r.legit_groups:
        lines.append(row(f"  {r.protected.groups[i] if r.protected else i}",
                         lambda s, i=i: _pct(s.group_share(i))))
    lines += [
        row("  latency p50 / p99",
            lambda s: f"{_secs(s.latency(0.5))} / {_secs(s.latency(0.99))}"),
        row("  answered too late", lambda s: _pct(s.share(True, "late"))),
        row("  dropped by the server (503)", lambda s: _pct(s.share(True, "dropped"))),
        row("  stopped by throttlekit", lambda s: _pct(s.stopped_share(True))),
        *[row(f"    {label}", lambda s, k=label: _pct(s.share(True, k)))
          for label in _labels(r, True)],
        row("  of those let through, answered in time", lambda s: _pct(s.admitted_answered())),
    ]
    if r.attack_total:
        lines.append(row("attack stopped before the app", lambda s: _pct(s.stopped_share(False))))
        lines += [row(f"  {label}", lambda s, k=label: _pct(s.share(False, k)))
                  for label in _labels(r)]
        lines.append(row("attack answered by the app",
                         lambda s: _pct(s.share(False, "answered", "late"))))
    lines.append(row("app utilisation", lambda s: _pct(s.utilisation)))
    return lines


def _protections(r: SimResult) -> str:
    """The protected run's protections, for under its column: ``rules+shield``."""
    return "+".join(r.protections) if r.protections else "none"


def _labels(r: SimResult, legitimate: bool = False) -> list[str]:
    """The stops seen in either run, known ones first."""
    seen = set()
    for run in (r.unprotected, r.protected):
        if run is not None:
            seen |= set(run.stops(legitimate))
    return [k for k in STOPS if k in seen] + sorted(seen - set(STOPS))


def format_report(r: SimResult, scenario: Scenario) -> str:
    """The human-readable report."""
    legit_clients = sum(g.clients for g in scenario.groups if g.legitimate)
    attack_clients = sum(g.clients for g in scenario.groups if not g.legitimate)
    # a --duration that ends before the attack: the description's "from t=60s" is not this run
    cut = r.attack_start is not None and r.attack_start >= r.duration
    lines = [
        f"scenario {r.scenario}: {scenario.description or ''}".rstrip(": "),
        *([f"  no attack in this run: it starts at t={r.attack_start:g}s, after the run's "
           f"{r.duration:g} s (--duration)"] if cut else []),
        f"  {legit_clients} legitimate clients, {attack_clients} attacking, "
        f"{r.duration:g} simulated seconds on {r.storage}",
        f"  protected run: {', '.join(r.protections) or 'no protection'} "
        f"(off: {', '.join(p for p in PROTECTIONS if p not in r.protections) or 'none'})",
        f"  server: {r.server.describe()}",
        "",
        *_side_by_side(r),
        f"{'legitimate clients banned':40s}{'-':>18s}{len(r.legit_banned):>18d}",
        "",
        "throttlekit, protected run",
    ]
    after = r.detected_after
    if r.attack_start is not None and not cut:
        if after is None:
            lines.append("  anomaly detected            no")
        else:
            lines.append(
                f"  anomaly detected            {after:6.1f} s after the attack started "
                f"(t={r.attack_start + after:.1f}s)"
            )
    elif r.detections:
        lines.append(f"  anomalies raised            {len(r.detections):6d}  (no attack: "
                     f"first at t={r.detections[0]:.1f}s)")
    if r.false_alarms and r.attack_start is not None and not cut:
        lines.append(f"  false alarms                {r.false_alarms:6d}  (before the attack)")
    if r.shield:
        lines.append(
            f"  shield bans                 {r.banned:6d}  "
            f"({len(r.legit_banned)} of them legitimate clients)"
        )
        held = ", ".join(f"{n} {d}" for d, n in sorted(r.contained.items())) or "nothing"
        lines.append(f"  shield contained            {held}")
    if r.known_at_anomaly is not None:
        lines.append(f"  clients with standing       {r.known_at_anomaly:6d}  (when the first "
                     "anomaly began)")
    lines.append(
        f"  latency added               median {r.latency(0.5) * 1e6:.1f} µs, "
        f"p99 {r.latency(0.99) * 1e6:.1f} µs per request (wall clock)"
    )
    lines.append(f"  ({len(r.added):,} requests in {r.wall_seconds:.1f} s of wall-clock time)")
    return "\n".join(lines)


# -- the plot -------------------------------------------------------------------------


def plot(r: SimResult, path: str) -> None:
    """Draw requests per second by outcome over time, both runs, into ``path`` (needs
    matplotlib)."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'throttlekit-web[plot]'"
        ) from None
    runs = [(name, run) for name, run in (("unprotected", r.unprotected),
                                          ("protected", r.protected)) if run is not None]
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.5 * len(runs)), sharex=True,
                             squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs, strict=True):
        _plot_run(ax, r, run, name)
    axes[-1, 0].set_xlabel("simulated seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_run(ax: Any, r: SimResult, run: RunStats, name: str) -> None:
    """One run: legitimate answered in time and not, attack at the app and stopped."""
    seconds = list(range(len(run.timeline)))
    rows = run.timeline or [[0, 0, 0, 0, 0]]
    series = [
        [row[4] for row in rows],
        [row[0] + row[1] - row[4] for row in rows],
        [row[2] for row in rows],
        [row[3] for row in rows],
    ]
    ax.stackplot(
        seconds or [0], *series,
        labels=[f"legitimate, answered within {r.server.timeout:g} s",
                "legitimate, not answered in time", "attack, let through to the server",
                "attack, stopped before the app"],
        colors=["#2b8a3e", "#f59f00", "#e03131", "#868e96"],
    )
    if r.attack_start is not None:
        ax.axvline(r.attack_start, color="black", linestyle=":", label="attack starts")
    after = r.detected_after
    if name == "protected" and after is not None and r.attack_start is not None:
        ax.axvline(r.attack_start + after, color="#1971c2", linestyle="--",
                   label="anomaly detected")
    ax.set_ylabel("requests per second")
    ax.set_title(f"throttlekit simulate {r.scenario}: " + (
        "without throttlekit" if name == "unprotected" else f"protected ({_protections(r)})"))
    ax.legend(loc="upper right", fontsize="small")
