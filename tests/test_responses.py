"""Rate-limit header fields, Retry-After, Accept negotiation and denial responses."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ConfigError, Decision, Rate
from throttlekit._responses import (
    HEADER_STYLES,
    Denial,
    check_header_style,
    default_responder,
    encode_headers,
    prefers_json,
    rate_limit_headers,
    retry_after_header,
    sf_string,
)

ALLOWED = Decision(True, 100, 42, 17.3, 0.0, Rate(100, 60.0))
DENIED = Decision(False, 5, 0, 59.5, 11.2, Rate(5, 60.0))
HOURLY = Decision(True, 1000, 3, 3599.0, 0.0, Rate(1000, 3600.0))
TOO_BIG = Decision(False, 5, 5, 0.0, math.inf, Rate(5, 60.0))


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        pytest.param(2.0, "2", id="whole"),
        pytest.param(2.0001, "3", id="rounds-up"),
        pytest.param(0.001, "1", id="tiny-is-1"),
        pytest.param(0.0, "0", id="zero"),
        pytest.param(-3.0, "0", id="negative-is-0"),
        pytest.param(math.inf, None, id="inf-omitted"),
        pytest.param(math.nan, None, id="nan-omitted"),
    ],
)
def test_retry_after(seconds, value):
    """Retry-After is whole seconds rounded up (RFC 9110), absent for an endless wait."""
    assert retry_after_header(seconds) == value


def test_draft10_single_policy():
    """One policy gives the draft-10 Structured-Field items, t rounded up."""
    assert rate_limit_headers([("per-ip", ALLOWED)], "draft10") == [
        ("RateLimit-Policy", '"per-ip";q=100;w=60'),
        ("RateLimit", '"per-ip";r=42;t=18'),
    ]


def test_draft10_several_policies_are_lists():
    """Several policies are listed in order as one Structured-Field list per field."""
    headers = dict(rate_limit_headers([("login", DENIED), ("hourly", HOURLY)], "draft10"))
    assert headers["RateLimit-Policy"] == '"login";q=5;w=60, "hourly";q=1000;w=3600'
    assert headers["RateLimit"] == '"login";r=0;t=60, "hourly";r=3;t=3599'


def test_draft10_fractional_window_is_integer():
    """A sub-second or fractional period still gives an integer w of at least 1."""
    d = Decision(True, 10, 9, 0.4, 0.0, Rate(10, 0.5))
    assert dict(rate_limit_headers([("fast", d)], "draft10"))["RateLimit-Policy"] == (
        '"fast";q=10;w=1'
    )


@pytest.mark.parametrize(
    ("name", "item"),
    [
        pytest.param("per-ip", '"per-ip"', id="plain"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="quote"),
        pytest.param("back\\slash", '"back\\\\slash"', id="backslash"),
        pytest.param("café\n", '"caf??"', id="non-ascii-and-control"),
    ],
)
def test_policy_names_are_sf_strings(name, item):
    """Policy names are valid RFC 8941 strings, whatever the rule is called."""
    assert sf_string(name) == item
    assert rate_limit_headers([(name, ALLOWED)], "draft10")[0][1].startswith(item + ";q=")


def test_legacy_reports_most_restrictive():
    """Legacy X-RateLimit-* report the denying policy (or the one with least remaining)."""
    now = 1_700_000_000.0
    assert rate_limit_headers([("hourly", HOURLY), ("login", DENIED)], "legacy", now=now) == [
        ("X-RateLimit-Limit", "5"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", str(int(now) + 60)),
    ]
    allowed = dict(rate_limit_headers([("per-ip", ALLOWED), ("hourly", HOURLY)], "legacy"))
    assert allowed["X-RateLimit-Limit"] == "1000" and allowed["X-RateLimit-Remaining"] == "3"


def test_legacy_reset_is_an_epoch_timestamp():
    """X-RateLimit-Reset is the epoch second the quota is back (as Flask-Limiter sends it),
    on the wall clock unless told the time."""
    before = time.time()
    reset = int(dict(rate_limit_headers([("per-ip", ALLOWED)], "legacy"))["X-RateLimit-Reset"])
    assert math.ceil(before + 17.3) <= reset <= math.ceil(time.time() + 17.3)
    headers = dict(rate_limit_headers([("per-ip", ALLOWED)], "legacy", now=1_700_000_000.5))
    assert headers["X-RateLimit-Reset"] == str(math.ceil(1_700_000_000.5 + 17.3))


def test_both_and_none_styles():
    """'both' sends draft-10 and legacy fields; 'none' and no policies send nothing."""
    names = [n for n, _ in rate_limit_headers([("per-ip", ALLOWED)], "both")]
    assert names == [
        "RateLimit-Policy",
        "RateLimit",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ]
    assert rate_limit_headers([("per-ip", ALLOWED)], "none") == []
    assert rate_limit_headers([], "draft10") == []


@pytest.mark.parametrize("style", ["draft03", "", None, "DRAFT10"])
def test_unknown_style_is_config_error(style):
    """An unknown header style is a ConfigError naming it, even with no policies."""
    with pytest.raises(ConfigError, match="header style"):
        rate_limit_headers([("per-ip", ALLOWED)], style)
    with pytest.raises(ConfigError):
        rate_limit_headers([], style)
    with pytest.raises(ConfigError):
        check_header_style(style)


def test_known_styles_pass_the_check():
    """Every documented style is accepted."""
    assert [check_header_style(s) for s in HEADER_STYLES] == list(HEADER_STYLES)


@pytest.mark.parametrize(
    ("accept", "json_wanted"),
    [
        pytest.param(None, False, id="no-header"),
        pytest.param("", False, id="empty"),
        pytest.param("*/*", False, id="anything-tie-goes-to-text"),
        pytest.param("application/json, text/plain, */*", True, id="named-json-wins-a-tie"),
        pytest.param("application/json", True, id="json"),
        pytest.param("application/problem+json", True, id="problem-json"),
        pytest.param("Application/JSON", True, id="case-insensitive"),
        pytest.param("text/plain", False, id="text"),
        pytest.param("text/html, */*;q=0.1", False, id="browser-like"),
        pytest.param("application/json, text/plain;q=0.5", True, id="json-preferred"),
        pytest.param("text/plain, application/json;q=0.9", False, id="text-preferred"),
        pytest.param("application/json;q=0.5, text/*;q=0.9", False, id="text-wildcard-wins"),
        pytest.param("application/*", True, id="application-wildcard"),
        pytest.param("text/*;q=0, */*", True, id="text-excluded-specific-wins"),
        pytest.param("application/json;q=0, */*", False, id="json-refused"),
        pytest.param("application/json;q=abc", False, id="bad-q-ignored"),
        pytest.param("application/json;q=2", False, id="out-of-range-q-ignored"),
        pytest.param("image/png", False, id="neither-goes-to-text"),
        pytest.param(";;,,/,garbage", False, id="garbage"),
        pytest.param("application/json ; q=0.8 , text/plain ; q=0.3", True, id="spaces"),
    ],
)
def test_accept_negotiation(accept, json_wanted):
    """JSON is chosen only when the client's Accept prefers it to text/plain."""
    assert prefers_json(accept) is json_wanted


@given(st.text(max_size=300))
def test_accept_never_raises(accept):
    """Arbitrary Accept text gives a bool."""
    assert prefers_json(accept) in (True, False)


def test_throttled_text_response():
    """A throttle denial is 429, no-store, Retry-After rounded up, plain text, extra headers."""
    extra = rate_limit_headers([("login", DENIED)], "draft10")
    denial = default_responder("throttled", "login", DENIED, None, extra)
    assert isinstance(denial, Denial)
    headers = dict(denial.headers)
    assert denial.status == 429
    assert headers["Retry-After"] == "12"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Length"] == str(len(denial.body))
    assert headers["RateLimit"] == '"login";r=0;t=60'
    assert b"Too Many Requests" in denial.body


def test_throttled_problem_json():
    """With JSON accepted, a 429 is an RFC 9457 quota-exceeded problem naming the policy."""
    denial = default_responder("throttled", "login", DENIED, "application/json", [])
    headers = dict(denial.headers)
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Content-Length"] == str(len(denial.body))
    problem = json.loads(denial.body)
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert problem["status"] == 429 and problem["title"]
    assert problem["violated-policies"] == ["login"]
    assert "12 seconds" in problem["detail"]


def test_cost_over_capacity_has_no_retry_after():
    """A request that can never pass gets 429 without Retry-After and says why."""
    denial = default_responder("throttled", "upload", TOO_BIG, "application/json", [])
    assert denial.status == 429
    assert "Retry-After" not in dict(denial.headers)
    assert "cannot succeed" in json.loads(denial.body)["detail"]


@pytest.mark.parametrize("kind", ["blocked", "banned"])
def test_block_and_ban_are_403_without_rule_names(kind):
    """Blocks and bans answer 403, never revealing the rule or a retry time."""
    for accept in (None, "application/json"):
        denial = default_responder(kind, "secret-rule", DENIED, accept, [])
        assert denial.status == 403
        assert "Retry-After" not in dict(denial.headers)
        assert dict(denial.headers)["Cache-Control"] == "no-store"
        assert b"secret-rule" not in denial.body
    problem = json.loads(default_responder(kind, "r", None, "application/json", []).body)
    assert problem["status"] == 403 and problem["type"] == "about:blank"


def test_shed_is_503_with_retry_after():
    """Load shedding answers 503 with Retry-After and a temporary-reduced-capacity problem."""
    d = Decision(False, 1, 0, 1.5, 1.5, Rate(1, 1.0))
    denial = default_responder("shed", "shed", d, "application/problem+json", [])
    assert denial.status == 503 and dict(denial.headers)["Retry-After"] == "2"
    assert json.loads(denial.body)["type"].endswith("#temporary-reduced-capacity")
    assert default_responder("shed", "shed", None, None, []).status == 503


def test_unknown_kind_is_refused_with_403():
    """An unexpected kind still refuses (403) instead of crashing."""
    assert default_responder("mystery", "r", None, None, []).status == 403


def test_responder_does_not_mutate_given_headers():
    """The caller's header list is copied, not appended to."""
    given_headers = [("X-Custom", "1")]
    denial = default_responder("throttled", "r", DENIED, None, given_headers)
    assert given_headers == [("X-Custom", "1")]
    assert denial.headers[0] == ("X-Custom", "1")


def test_encode_headers_for_asgi():
    """ASGI header pairs are lower-case latin-1 bytes."""
    assert encode_headers([("Retry-After", "3"), ("RateLimit", '"a";r=1;t=2')]) == [
        (b"retry-after", b"3"),
        (b"ratelimit", b'"a";r=1;t=2'),
    ]


_numbers = st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True))
_policy = st.tuples(
    st.sampled_from(["a", "b%s", 'q"uo\\te', "per-ip/1", "é"]),
    st.integers(-3, 10**10),  # remaining
    _numbers,  # reset_after
    st.sampled_from([Rate(5, 60.0), Rate(100, 1.5), Rate(10**9, 86400.0)]),
)


@given(st.lists(_policy, min_size=2, max_size=6, unique_by=lambda p: p[0]), st.booleans())
def test_several_policies_list_every_item_as_the_docs_write_it(
    policies: list[tuple[str, int, float, Rate]], again: bool,
) -> None:
    """With several policies, ``RateLimit-Policy`` and ``RateLimit`` hold one item per
    policy, in order: ``q``/``w`` of its rate, ``r`` what remains (never below 0), ``t`` the
    seconds to the reset rounded up (0 for none, 2**31 for never), however the numbers
    come and whether the fields were built before."""
    given_ = [(name, Decision(True, rate.limit, rem, reset, 0.0, rate))
              for name, rem, reset, rate in policies]
    if again:
        rate_limit_headers(given_, "draft10")
    policy = ", ".join(f"{sf_string(n)};q={r.limit};w={max(1, math.ceil(r.period))}"
                       for n, _, _, r in policies)
    items = ", ".join(
        f"{sf_string(n)};r={max(0, rem)};t="
        f"{0 if not reset > 0 else 2**31 if reset == math.inf else math.ceil(reset)}"
        for n, rem, reset, _ in policies)
    assert rate_limit_headers(given_, "draft10") == [
        ("RateLimit-Policy", policy), ("RateLimit", items)]
    assert rate_limit_headers(given_, "both", now=0)[:2] == [
        ("RateLimit-Policy", policy), ("RateLimit", items)]
