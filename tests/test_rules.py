"""The rule engine: registration, evaluation order, bans, throttles, events, failures."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from downable import DownableStore
from throttlekit import ConfigError, Event, Limiter, RequestView, Verdict
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0  # a minute boundary


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    clock.set(T0)
    return Limiter("memory://", clock=clock)


def view(limiter: Limiter, path: str = "/", ip: str | None = "198.51.100.7",
         method: str = "GET", **kw: Any) -> RequestView:
    env = EnvironBuilder(path, method=method, environ_base={"REMOTE_ADDR": ip}, **kw)
    return RequestView.from_environ(env.get_environ(), limiter.resolver)


def ev(limiter: Limiter, path: str = "/", ip: str | None = "198.51.100.7", **kw: Any) -> Verdict:
    return limiter.evaluate(view(limiter, path, ip, **kw))


# -- the issue's example ---------------------------------------------------------------------


def test_issue_example_works_verbatim(limiter: Limiter) -> None:
    """The rule set from the issue registers and evaluates in the documented order."""
    limiter.safelist("health", lambda r: r.path == "/healthz")
    limiter.blocklist("bad-nets", ips=["203.0.113.0/24", "2001:db8::/32"])
    limiter.blocklist("bad-agents", lambda r: "sqlmap" in r.headers.get("user-agent", ""))
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"),
                     maxretry=3, findtime=600, bantime=3600)
    limiter.throttle("login", "5/minute", match=lambda r: r.path == "/login" and r.method == "POST",
                     key=lambda r: r.form.get("username"), strategy="sliding_log")
    limiter.throttle("per-ip", "100/minute; 20/second", strategy="token_bucket")
    limiter.track("big-uploads",
                  match=lambda r: int(r.headers.get("content-length") or 0) > 10**7)
    assert ev(limiter, "/healthz", ip="203.0.113.5").kind == "safelisted"
    assert ev(limiter, ip="203.0.113.5").kind == "blocked"
    assert ev(limiter, headers={"User-Agent": "sqlmap/1"}).kind == "blocked"
    v = ev(limiter)
    assert v.allowed and [n for n, _ in v.policies] == ["per-ip", "per-ip/1"]
    kinds = [ev(limiter, "/login", ip=f"192.0.2.{i}", method="POST",
                data={"username": "ann"}).kind for i in range(6)]
    assert kinds == ["allowed"] * 5 + ["throttled"]


# -- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "needle"),
    [
        pytest.param(lambda lim: lim.throttle("x", "5/fortnight"), "5/fortnight", id="bad-rate"),
        pytest.param(lambda lim: lim.throttle("x", "5/minute", strategy="leaky"), "leaky",
                     id="bad-strategy"),
        pytest.param(lambda lim: lim.throttle("x", "5/minute", burst=3), "burst", id="burst-no-tb"),
        pytest.param(lambda lim: lim.throttle("x", "5/minute", cost=-1), "-1", id="neg-cost"),
        pytest.param(lambda lim: lim.throttle("x", "5/minute", key=42), "42", id="bad-key"),
        pytest.param(lambda lim: lim.throttle("x", "5/minute", match="yes"), "yes", id="bad-match"),
        pytest.param(lambda lim: lim.throttle("", "5/minute"), "name", id="empty-name"),
        pytest.param(lambda lim: lim.blocklist("x", ips=["10.0.0.0/33"]), "10.0.0.0/33",
                     id="bad-cidr"),
        pytest.param(lambda lim: lim.blocklist("x", ips="10.0.0.0/8"), "10.0.0.0/8", id="ips-str"),
        pytest.param(lambda lim: lim.blocklist("x"), "predicate", id="nothing-to-match"),
        pytest.param(lambda lim: lim.fail2ban("x", match=lambda r: True, maxretry=0, findtime=1,
                                          bantime=1), "maxretry", id="maxretry-0"),
        pytest.param(lambda lim: lim.fail2ban("x", match=lambda r: True, maxretry=1, findtime=-1,
                                          bantime=1), "findtime", id="neg-findtime"),
        pytest.param(lambda lim: lim.on("exploded", print), "exploded", id="bad-event-kind"),
    ],
)
def test_bad_configuration_is_config_error(limiter: Limiter, register: Any, needle: str) -> None:
    """Misconfigured rules are refused at setup with a message naming the bad value."""
    with pytest.raises(ConfigError, match=needle.replace("/", ".").replace("-", ".")):
        register(limiter)


def test_duplicate_rule_names_are_refused(limiter: Limiter) -> None:
    """Rule names are unique across all kinds."""
    limiter.throttle("a", "1/second")
    with pytest.raises(ConfigError, match="duplicate rule name 'a'"):
        limiter.blocklist("a", lambda r: True)


@pytest.mark.parametrize("bad", [-1, True, ["10.0.0.0/99"]])
def test_bad_trusted_proxies_is_config_error(bad: Any) -> None:
    """trusted_proxies < 0 or a bad CIDR is a ConfigError on the Limiter."""
    with pytest.raises(ConfigError):
        Limiter(trusted_proxies=bad)


# -- throttles -------------------------------------------------------------------------------


def test_every_throttle_is_checked_and_none_charged_on_refusal(limiter: Limiter) -> None:
    """If one throttle refuses, the others are not charged (no partial charge)."""
    limiter.throttle("wide", "10/minute", strategy="fixed_window")
    limiter.throttle("narrow", "2/minute", strategy="fixed_window")
    assert ev(limiter).allowed and ev(limiter).allowed
    refused = ev(limiter)
    assert (refused.kind, refused.rule) == ("throttled", "narrow")
    # all three were checked: wide is reported, and only charged for the two allowed ones
    wide = dict(refused.policies)["wide"]
    assert wide.remaining == 8


def test_refusal_reports_the_longest_wait(limiter: Limiter, clock: FakeClock) -> None:
    """When several throttles refuse, the verdict names the one with the longest wait."""
    limiter.throttle("second", "1/second", strategy="fixed_window")
    limiter.throttle("hour", "1/hour", strategy="fixed_window")
    ev(limiter)
    v = ev(limiter)
    assert v.rule == "hour" and v.decision is not None and v.decision.retry_after > 60


def test_key_none_skips_the_rule(limiter: Limiter) -> None:
    """A key function returning None leaves the request out of that rule."""
    limiter.throttle("api-key", "1/minute", key="header:X-Api-Key")
    assert all(ev(limiter).allowed for _ in range(3))
    h = {"X-Api-Key": "k1"}
    assert ev(limiter, headers=h).allowed
    assert not ev(limiter, headers=h).allowed


def test_cost_function(limiter: Limiter) -> None:
    """cost= as a function of the request charges that many units."""
    limiter.throttle("bytes", "10/minute", cost=lambda r: int(r.query or 1))
    assert ev(limiter, query_string="7").allowed
    assert not ev(limiter, query_string="4").allowed
    assert ev(limiter, query_string="3").allowed


def test_dry_run_counts_and_reports_but_never_refuses(limiter: Limiter) -> None:
    """A dry-run rule is charged on its own, emits would-be refusals and never refuses."""
    events: list[Event] = []
    limiter.on("throttled", events.append)
    limiter.throttle("new-rule", "2/minute", dry_run=True)
    verdicts = [ev(limiter) for _ in range(4)]
    assert all(v.allowed for v in verdicts)
    assert [(e.rule, e.dry_run) for e in events] == [("new-rule", True)] * 2
    assert verdicts[0].policies == []  # dry-run rules are invisible to clients


def test_dry_run_rule_is_charged_when_another_refuses(limiter: Limiter) -> None:
    """A dry-run rule counts every request, even ones a real throttle refuses."""
    seen: list[Event] = []
    limiter.on(seen.append)
    limiter.throttle("real", "1/minute")
    limiter.throttle("shadow", "10/minute", dry_run=True)
    for _ in range(3):
        ev(limiter)
    shadow = [e.decision.remaining for e in seen if e.rule == "shadow" and e.decision]
    assert shadow == [9, 8, 7]


def test_state_survives_a_changed_amount(limiter: Limiter, clock: FakeClock) -> None:
    """Rule state is keyed by name, strategy and period: a tightened rule applies at once."""
    limiter.throttle("api", "10/minute", strategy="fixed_window")
    for _ in range(5):
        ev(limiter)
    tighter = Limiter(limiter.storage, clock=clock)
    tighter.throttle("api", "5/minute", strategy="fixed_window")
    assert not ev(tighter).allowed


def test_rule_state_does_not_collide_with_direct_hits(limiter: Limiter) -> None:
    """limiter.hit on the client's key does not share state with a rule on that client."""
    limiter.throttle("per-ip", "1/minute")
    assert limiter.hit("198.51.100.7", "1/minute").allowed
    assert ev(limiter).allowed


def test_count_when_tests_before_and_charges_after(limiter: Limiter) -> None:
    """A count_when rule refuses once enough matching responses were settled."""
    limiter.throttle("failed-logins", "2/minute",
                     count_when=lambda resp: resp.status_code == 401)
    for status in (200, 401, 200, 401):
        v = ev(limiter)
        assert v.allowed
        limiter.settle(v, status)
    v = ev(limiter)
    assert (v.kind, v.rule) == ("throttled", "failed-logins")
    assert v.decision is not None and v.decision.retry_after > 0


def test_settle_is_idempotent(limiter: Limiter) -> None:
    """Settling one verdict twice charges once."""
    limiter.throttle("f", "2/minute", count_when=lambda resp: True)
    v = ev(limiter)
    limiter.settle(v, 500)
    limiter.settle(v, 500)
    assert ev(limiter).allowed


def test_reset_rules_forgets_a_discriminator(limiter: Limiter) -> None:
    """reset_rules(key) gives that key a fresh start (e.g. after a good login)."""
    limiter.throttle("login", "1/minute", key=lambda r: r.headers.get("x-user"))
    h = {"X-User": "ann"}
    ev(limiter, headers=h)
    assert not ev(limiter, headers=h).allowed
    limiter.reset_rules("ann")
    assert ev(limiter, headers=h).allowed


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=40))
def test_exactly_the_limit_is_admitted_per_client(clients: list[str]) -> None:
    """Property: each client gets exactly `limit` admissions within one window."""
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    limiter.throttle("t", "3/minute", key="header:X-Client", strategy="sliding_log")
    admitted: dict[str, int] = {}
    for c in clients:
        v = ev(limiter, headers={"X-Client": c})
        admitted[c] = admitted.get(c, 0) + v.allowed
    for c in set(clients):
        assert admitted[c] == min(3, clients.count(c))


# -- blocklists and bans ---------------------------------------------------------------------


def test_list_rule_with_ips_and_predicate_needs_both(limiter: Limiter) -> None:
    """A list rule given both ips= and a predicate matches only when both hold."""
    limiter.safelist("office-admin", lambda r: r.path.startswith("/admin"), ips=["10.0.0.0/8"])
    limiter.blocklist("admin", lambda r: r.path.startswith("/admin"))
    assert ev(limiter, "/admin", ip="10.1.2.3").kind == "safelisted"
    assert ev(limiter, "/admin", ip="192.0.2.1").kind == "blocked"
    assert ev(limiter, "/", ip="10.1.2.3").kind == "allowed"


def test_ipv4_mapped_client_matches_ipv4_blocklist(limiter: Limiter) -> None:
    """An IPv4-mapped IPv6 peer is matched as its IPv4 address."""
    limiter.blocklist("nets", ips=["203.0.113.0/24"])
    assert ev(limiter, ip="::ffff:203.0.113.9").kind == "blocked"


def test_dynamic_block_and_unblock(limiter: Limiter, clock: FakeClock) -> None:
    """limiter.block refuses a client until unblocked or expired."""
    limiter.block("192.0.2.1", ttl=60, reason="abuse")
    assert ev(limiter, ip="192.0.2.1").kind == "blocked"
    assert [b.key for b in limiter.blocked()] == ["192.0.2.1"]
    assert limiter.unblock("192.0.2.1")
    assert ev(limiter, ip="192.0.2.1").allowed
    limiter.block("192.0.2.1", ttl=60)
    clock.advance(61)
    assert ev(limiter, ip="192.0.2.1").allowed


def test_block_of_an_ipv6_network_key(limiter: Limiter) -> None:
    """Blocking a client key (an IPv6 /64) refuses every address in it."""
    limiter.block("2001:db8:1:2::/64")
    assert ev(limiter, ip="2001:db8:1:2::99").kind == "blocked"
    assert ev(limiter, ip="2001:db8:1:3::99").allowed


def test_fail2ban(limiter: Limiter, clock: FakeClock) -> None:
    """fail2ban refuses matches; maxretry of them within findtime bans the client entirely."""
    banned: list[Event] = []
    limiter.on("banned", banned.append)
    limiter.fail2ban("scan", match=lambda r: r.path.startswith("/wp-admin"),
                     maxretry=3, findtime=60, bantime=600)
    assert ev(limiter, "/wp-admin").kind == "banned"
    assert ev(limiter, "/").allowed
    assert ev(limiter, "/wp-admin").kind == "banned"
    assert ev(limiter, "/").allowed
    assert ev(limiter, "/wp-admin").kind == "banned"
    assert ev(limiter, "/").kind == "banned"  # now banned from everything
    assert ev(limiter, "/", ip="192.0.2.1").allowed
    assert [b.key for b in limiter.blocked()] == ["fail2ban:scan:198.51.100.7"]
    clock.advance(601)
    assert ev(limiter, "/").allowed
    assert {e.key for e in banned} == {"198.51.100.7"}


def test_fail2ban_matches_outside_findtime_do_not_ban(limiter: Limiter,
                                                      clock: FakeClock) -> None:
    """Matches spread wider than findtime never reach maxretry."""
    limiter.fail2ban("scan", match=lambda r: r.path == "/x", maxretry=2, findtime=10,
                     bantime=600)
    for _ in range(4):
        ev(limiter, "/x")
        clock.advance(30)
    assert ev(limiter, "/").allowed


def test_allow2ban(limiter: Limiter) -> None:
    """allow2ban lets matches through until maxretry, then bans the client."""
    limiter.allow2ban("logins", match=lambda r: r.path == "/login", maxretry=2, findtime=60,
                      bantime=600)
    assert ev(limiter, "/login").allowed
    assert ev(limiter, "/login").allowed
    assert ev(limiter, "/login").kind == "banned"
    assert ev(limiter, "/").kind == "banned"


def test_unblocking_a_ban_resets_its_counter(limiter: Limiter) -> None:
    """After an admin lifts a ban, the client starts from zero matches."""
    limiter.allow2ban("logins", match=lambda r: r.path == "/login", maxretry=2, findtime=60,
                      bantime=600)
    ev(limiter, "/login")
    ev(limiter, "/login")
    assert limiter.unblock("allow2ban:logins:198.51.100.7")
    assert ev(limiter, "/login").allowed
    assert ev(limiter, "/").allowed


def test_fail2ban_refusals_do_not_charge_throttles(limiter: Limiter) -> None:
    """A request fail2ban refuses does not use up a throttle."""
    limiter.fail2ban("scan", match=lambda r: r.path == "/x", maxretry=100, findtime=60,
                     bantime=60)
    limiter.throttle("per-ip", "1/minute")
    ev(limiter, "/x")
    assert ev(limiter, "/").allowed


# -- tracks and events -----------------------------------------------------------------------


def test_track_emits_but_never_refuses(limiter: Limiter) -> None:
    """A track rule emits 'tracked' events for matching requests that go through."""
    seen: list[Event] = []
    limiter.on("tracked", seen.append)
    limiter.track("posts", lambda r: r.method == "POST")
    assert ev(limiter, method="POST").allowed
    assert ev(limiter).allowed
    assert [(e.kind, e.rule, e.key) for e in seen] == [("tracked", "posts", "198.51.100.7")]


def test_event_fields(limiter: Limiter, clock: FakeClock) -> None:
    """Events carry the kind, rule, key, request view, decision and the limiter's time."""
    seen: list[Event] = []

    @limiter.on
    def everything(e: Event) -> None:
        seen.append(e)

    limiter.throttle("per-ip", "1/minute")
    ev(limiter)
    ev(limiter)
    assert [e.kind for e in seen] == ["allowed", "throttled"]
    e = seen[1]
    assert (e.rule, e.key, e.dry_run, e.at) == ("per-ip", "198.51.100.7", False, T0)
    assert e.request.path == "/" and e.decision is not None and not e.decision.allowed


def test_raising_event_callback_is_logged_not_fatal(limiter: Limiter,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged once and the request is still decided."""
    limiter.on("allowed", lambda e: 1 / 0)
    limiter.throttle("per-ip", "5/minute")
    with caplog.at_level(logging.ERROR, "throttlekit"):
        assert ev(limiter).allowed
        assert ev(limiter).allowed
    assert len([r for r in caplog.records if "callback" in r.getMessage()]) == 1


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "allowed"), [("allow", True), ("deny", False),
                                                  ("local", True)])
def test_raising_key_function_follows_on_storage_error(policy: str, allowed: bool,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A key function that raises is logged; the request is treated per on_storage_error."""
    limiter = Limiter(on_storage_error=policy)
    limiter.throttle("bad", "5/minute", key=lambda r: r.headers["x-missing"])
    with caplog.at_level(logging.ERROR, "throttlekit"):
        v = ev(limiter)
    assert v.allowed is allowed
    assert "KeyError" in caplog.text and "'bad'" in caplog.text


def test_storage_outage_local_fallback(clock: FakeClock) -> None:
    """With the store down, on_storage_error='local' keeps limiting in process, degraded."""
    storage = DownableStore()
    limiter = Limiter(storage, clock=clock, on_storage_error="local", retry_interval=5)
    limiter.throttle("per-ip", "2/minute")
    storage.down = True
    verdicts = [ev(limiter) for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert all(v.degraded for v in verdicts)
    assert storage.calls == 1  # the breaker keeps the dead store out of the path


def test_storage_outage_allow_and_deny(clock: FakeClock) -> None:
    """'allow' fails open and 'deny' fails closed, both marked degraded, neither raising."""
    for policy, allowed in (("allow", True), ("deny", False)):
        storage = DownableStore()
        storage.down = True
        limiter = Limiter(storage, clock=clock, on_storage_error=policy)
        limiter.throttle("per-ip", "1/minute")
        limiter.fail2ban("scan", match=lambda r: True, maxretry=1, findtime=60, bantime=60)
        v = ev(limiter, "/x")
        assert (v.allowed, v.degraded) == (allowed, True) or v.kind == "banned"
        v = ev(limiter)
        assert v.degraded


def test_storage_recovers_after_retry_interval(clock: FakeClock) -> None:
    """Once the store answers again, decisions come from it and are no longer degraded."""
    storage = DownableStore()
    limiter = Limiter(storage, clock=clock, retry_interval=0)
    limiter.throttle("per-ip", "5/minute")
    storage.down = True
    assert ev(limiter).degraded
    storage.down = False
    assert not ev(limiter).degraded


def test_one_storage_call_per_request(clock: FakeClock) -> None:
    """Bans, ban counters and every throttle of a request go to the store in one call."""
    storage = DownableStore()
    limiter = Limiter(storage, clock=clock)
    limiter.fail2ban("scan", match=lambda r: True, maxretry=10, findtime=60, bantime=60)
    limiter.allow2ban("a2b", match=lambda r: True, maxretry=10, findtime=60, bantime=60)
    for i in range(3):
        limiter.throttle(f"t{i}", "10/minute")
    ev(limiter, "/")
    assert storage.calls == 1
