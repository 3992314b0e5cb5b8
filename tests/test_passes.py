"""Challenge passes, proof of work and their pages (``throttlekit._challenge``).

Passes cannot be forged, moved to another network or used after expiry; malformed input
of any shape is refused without raising; the pages are well-formed and escape what they
are given.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import ipaddress
import json
import logging
import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from throttlekit import ConfigError
from throttlekit._challenge import (
    COOKIE_NAME,
    Answer,
    PassSigner,
    WorkChallenge,
    meets,
    pass_cookie,
    pass_redirect,
    read_answer,
    safe_path,
    solve,
    work_page,
)
from throttlekit._challenge import passes as passes_module
from throttlekit._challenge import work as work_module
from throttlekit._challenge.passes import MAX_SKEW
from throttlekit.testing import FakeClock

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
IP = "203.0.113.9"
IP6 = "2001:db8:1:2::5"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HOSTILE = "/x\"'><script>alert(1)</script><img src=x onerror=alert(2)>&amp;"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def signer(clock: FakeClock) -> PassSigner:
    return PassSigner(KEY, clock=clock)


@pytest.fixture
def work(signer: PassSigner) -> WorkChallenge:
    return WorkChallenge(signer, difficulty=6, ttl=120.0)


def fresh(**kwargs: object) -> PassSigner:
    """A signer with its own clock (for hypothesis tests, which take no fixtures)."""
    return PassSigner(kwargs.pop("key", KEY), clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_docstring_examples_run():
    for module in (passes_module, work_module):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# -- passes: the round trip ---------------------------------------------------------------


def test_a_pass_round_trips_and_says_what_it_is(signer: PassSigner, clock: FakeClock):
    value = signer.issue(IP)
    assert re.fullmatch(r"[A-Za-z0-9_-]{108}", value)  # cookie-safe, fixed length
    p = signer.verify(value, IP)
    assert p is not None
    assert re.fullmatch(r"[0-9a-f]{30}", p.id)
    assert p.network == "203.0.113.0/24"
    assert p.expires == int(clock.now) + 3600


def test_every_pass_has_its_own_id(signer: PassSigner):
    ids = {signer.verify(signer.issue(IP), IP).id for _ in range(50)}  # type: ignore[union-attr]
    assert len(ids) == 50


def test_a_seed_fixes_the_id(signer: PassSigner, clock: FakeClock):
    first = signer.verify(signer.issue(IP, seed=b"nonce"), IP)
    clock.advance(10)
    again = signer.verify(signer.issue(IP, seed=b"nonce"), IP)
    other = signer.verify(signer.issue(IP, seed=b"other"), IP)
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id
    assert again.expires == first.expires + 10


@pytest.mark.parametrize("ip", [None, "", "unknown", "999.1.1.1", "unix:/tmp/s", 42])
def test_issuing_needs_an_address(signer: PassSigner, ip: object):
    with pytest.raises(ValueError, match="not an IP address"):
        signer.issue(ip)  # type: ignore[arg-type]


# -- passes: forgery ----------------------------------------------------------------------


def test_every_single_character_change_is_refused(signer: PassSigner):
    value = signer.issue(IP)
    for i, old in enumerate(value):
        for new in B64URL + "+/=. \x00é":
            if new != old:
                assert signer.verify(value[:i] + new + value[i + 1 :], IP) is None, (i, new)


def test_every_single_byte_change_is_refused(signer: PassSigner):
    raw = base64.urlsafe_b64decode(signer.issue(IP))
    for i in range(len(raw)):
        for delta in (1, 0x80, 0xFF):
            changed = bytearray(raw)
            changed[i] ^= delta
            value = base64.urlsafe_b64encode(bytes(changed)).decode()
            assert signer.verify(value, IP) is None, (i, delta)


@given(edit=st.tuples(st.integers(0, 107), st.integers(0, 8), st.text(max_size=8)))
def test_any_edit_is_refused(edit: tuple[int, int, str]):
    """Cut any run of characters out and put any text in its place."""
    signer = fresh()
    value = signer.issue(IP)
    start, length, text = edit
    changed = value[:start] + text + value[start + length :]
    if changed != value:
        assert signer.verify(changed, IP) is None


def test_a_pass_of_another_key_is_refused(clock: FakeClock):
    value = PassSigner(OTHER_KEY, clock=clock).issue(IP)
    assert PassSigner(KEY, clock=clock).verify(value, IP) is None


def test_a_forged_pass_with_a_guessed_mac_is_refused(signer: PassSigner):
    """Everything but the MAC can be written by anyone: the layout is public."""
    raw = base64.urlsafe_b64decode(signer.issue(IP))
    body = bytearray(raw[:49])
    body[9:17] = (2**40).to_bytes(8, "big")  # expiry far away
    for mac in (bytes(32), hashlib.sha256(bytes(body)).digest(), raw[49:]):
        forged = base64.urlsafe_b64encode(bytes(body) + mac).decode()
        assert signer.verify(forged, IP) is None


def test_keys_rotate(clock: FakeClock):
    old = PassSigner(KEY, clock=clock)
    rotating = PassSigner([OTHER_KEY, KEY], clock=clock)
    new = PassSigner(OTHER_KEY, clock=clock)
    old_pass, rotated_pass = old.issue(IP), rotating.issue(IP)
    assert rotating.verify(old_pass, IP) is not None  # verify with any
    assert new.verify(rotated_pass, IP) is not None  # sign with the first
    assert old.verify(rotated_pass, IP) is None
    assert new.verify(old_pass, IP) is None  # the old key dropped


def test_a_str_key_is_its_utf8_bytes(clock: FakeClock):
    value = PassSigner("schlüssel" * 3, clock=clock).issue(IP)
    assert PassSigner(("schlüssel" * 3).encode(), clock=clock).verify(value, IP) is not None


def test_no_key_warns_and_uses_one_key_per_process(clock: FakeClock, caplog):
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        a = PassSigner(None, clock=clock)
    (record,) = caplog.records
    assert record.name == "throttlekit"
    assert "restart" in record.getMessage() and "workers" in record.getMessage()
    b = PassSigner(None, clock=clock)
    assert b.verify(a.issue(IP), IP) is not None
    assert PassSigner(KEY, clock=clock).verify(a.issue(IP), IP) is None


# -- passes: network binding --------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued_to", "used_from", "good"),
    [
        (IP, "203.0.113.200", True),
        (IP, "203.0.113.0", True),
        (IP, "203.0.114.9", False),
        (IP, "198.51.100.9", False),
        (IP, "::ffff:203.0.113.7", True),  # the same IPv4 host, written as IPv6
        (IP, "[203.0.113.7]:443", True),
        (IP, "203.0.113.7:443", True),
        (IP6, "2001:db8:1:ffff:ffff::1", True),
        (IP6, "2001:db8:1::", True),
        (IP6, "2001:db8:2::5", False),
        (IP6, "2001:db9:1:2::5", False),
        (IP, "::203.0.113.9", True),  # IPv4-compatible: the IPv4 host
        (IP, "2001:db8::cb00:7109", False),
        (IP, None, False),
        (IP, "garbage", False),
        (IP, 42, False),
    ],
)
def test_a_pass_is_good_only_in_its_network(
    signer: PassSigner, issued_to: str, used_from: object, good: bool
):
    assert (signer.verify(signer.issue(issued_to), used_from) is not None) is good


def test_the_network_is_named(signer: PassSigner):
    assert signer.verify(signer.issue(IP6), IP6).network == "2001:db8:1::/48"  # type: ignore[union-attr]


def test_prefixes_are_settings(clock: FakeClock):
    exact = PassSigner(KEY, ipv4_prefix=32, ipv6_prefix=64, clock=clock)
    assert exact.verify(exact.issue(IP), IP) is not None
    assert exact.verify(exact.issue(IP), "203.0.113.10") is None
    assert exact.verify(exact.issue(IP6), "2001:db8:1:2::6") is not None
    assert exact.verify(exact.issue(IP6), "2001:db8:1:3::5") is None
    # a pass bound under other prefixes is not good here
    assert PassSigner(KEY, clock=clock).verify(exact.issue(IP), IP) is None


@given(a=st.integers(0, 2**32 - 1), b=st.integers(0, 2**32 - 1))
@example(a=0xCB007109, b=0xCB0071FF)
def test_ipv4_passes_travel_within_a_slash_24_only(a: int, b: int):
    signer = fresh()
    first, second = str(ipaddress.IPv4Address(a)), str(ipaddress.IPv4Address(b))
    good = signer.verify(signer.issue(first), second) is not None
    assert good is (a >> 8 == b >> 8)


@given(a=st.integers(2**125, 2**126 - 1), b=st.integers(0, 2**80 - 1), same=st.booleans())
def test_ipv6_passes_travel_within_a_slash_48_only(a: int, b: int, same: bool):
    signer = fresh()
    other = (a & ~(2**80 - 1)) | b if same else a ^ (1 << 80) ^ b
    first, second = str(ipaddress.IPv6Address(a)), str(ipaddress.IPv6Address(other))
    assert (signer.verify(signer.issue(first), second) is not None) is same


# -- passes: time -------------------------------------------------------------------------


def test_a_pass_expires(signer: PassSigner, clock: FakeClock):
    value = signer.issue(IP)
    clock.advance(3599.5)
    assert signer.verify(value, IP) is not None
    clock.advance(0.5)
    assert signer.verify(value, IP) is None
    clock.advance(10**9)
    assert signer.verify(value, IP) is None


def test_a_pass_from_the_future_is_refused(clock: FakeClock):
    ahead = FakeClock(clock.now + MAX_SKEW + 1)
    value = PassSigner(KEY, clock=ahead).issue(IP)
    assert PassSigner(KEY, clock=clock).verify(value, IP) is None
    ahead.set(clock.now + MAX_SKEW)  # a little skew between hosts is fine
    value = PassSigner(KEY, clock=ahead).issue(IP)
    assert PassSigner(KEY, clock=clock).verify(value, IP) is not None


def test_a_lowered_ttl_applies_to_passes_already_out(clock: FakeClock):
    value = PassSigner(KEY, ttl=3600, clock=clock).issue(IP)
    shorter = PassSigner(KEY, ttl=60, clock=clock)
    assert shorter.verify(value, IP).expires == int(clock.now) + 60  # type: ignore[union-attr]
    clock.advance(60)
    assert shorter.verify(value, IP) is None


# -- passes: settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": b"short"}, "key #1 is 5 bytes"),
        ({"key": "fifteen chars.."}, "key #1 is 15 bytes"),
        ({"key": [KEY, b"tiny"]}, "key #2 is 4 bytes"),
        ({"key": []}, "non-empty list"),
        ({"key": 12345}, "got int"),
        ({"key": [KEY, 7]}, "key #2 must be bytes or a str, got int"),
        ({"key": bytearray(KEY)}, "got bytearray"),
        ({"ttl": 0}, "ttl must be"),
        ({"ttl": -5.0}, "ttl must be"),
        ({"ttl": float("nan")}, "ttl must be"),
        ({"ttl": float("inf")}, "ttl must be"),
        ({"ttl": True}, "ttl must be"),
        ({"ttl": "3600"}, "ttl must be"),
        ({"ttl": 401 * 86400}, "ttl must be"),
        ({"ipv4_prefix": 0}, "ipv4_prefix must be an integer in 1..32, got 0"),
        ({"ipv4_prefix": 33}, "ipv4_prefix"),
        ({"ipv4_prefix": True}, "ipv4_prefix"),
        ({"ipv6_prefix": 129}, "ipv6_prefix must be an integer in 1..128, got 129"),
        ({"ipv6_prefix": 48.0}, "ipv6_prefix"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], message: str):
    kwargs.setdefault("key", KEY)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        PassSigner(**kwargs)  # type: ignore[arg-type]
    assert "short" not in str(info.value) and "tiny" not in str(info.value)  # no key shown


def test_the_key_is_never_shown(signer: PassSigner):
    assert repr(signer) == "PassSigner(ttl=3600.0, ipv4_prefix=24, ipv6_prefix=48)"
    assert "kkkk" not in repr(signer.keys) and "kkkk" not in repr(WorkChallenge(signer))


# -- malformed input never raises ---------------------------------------------------------

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(),
    st.text(),
    st.binary().map(lambda b: b.decode("latin-1")),  # bytes smuggled in a str
    st.text(alphabet=B64URL + "+/=", min_size=100, max_size=120),
    st.text(alphabet=B64URL, min_size=108, max_size=108),
    st.text(alphabet=B64URL, min_size=116, max_size=116),
    st.integers(0, 20).map(lambda n: "A" * 10**n if n < 7 else "é" * 10**6),
    st.lists(st.text(), max_size=3),
)


@given(value=ANYTHING, client_ip=ANYTHING)
def test_verify_never_raises(value: object, client_ip: object):
    signer = fresh()
    assert signer.verify(value, client_ip) is None
    assert signer.verify(value, IP) is None


@given(challenge=ANYTHING, solution=ANYTHING, client_ip=ANYTHING)
def test_work_never_raises(challenge: object, solution: object, client_ip: object):
    work = WorkChallenge(fresh(), difficulty=1)
    assert work.verify(challenge, solution, client_ip) is None
    assert work.redeem(challenge, solution, IP) is None


def test_a_pass_and_a_challenge_are_not_each_other(signer: PassSigner, work: WorkChallenge):
    challenge = work.issue(IP)
    assert signer.verify(challenge, IP) is None
    assert signer.verify(challenge[:108], IP) is None
    value = signer.issue(IP)
    for counter in range(64):
        assert work.verify(value, counter, IP) is None
        assert work.verify(value + "AAAA" + "A" * 4, counter, IP) is None


# -- proof of work ------------------------------------------------------------------------


def test_a_solved_challenge_yields_a_pass(work: WorkChallenge, signer: PassSigner):
    challenge = work.issue(IP)
    assert re.fullmatch(r"[A-Za-z0-9_-]{116}", challenge)
    counter = solve(challenge, 6, limit=100_000)
    assert counter is not None
    solved = work.verify(challenge, str(counter), "203.0.113.44")
    assert solved is not None
    assert (solved.difficulty, solved.network) == (6, "203.0.113.0/24")
    assert work.verify(challenge, counter, IP) is not None  # an int is read as its text
    value = work.redeem(challenge, str(counter), "203.0.113.44")
    p = signer.verify(value, IP)
    assert p is not None and p.network == "203.0.113.0/24"


def test_a_wrong_solution_is_refused(work: WorkChallenge):
    challenge = work.issue(IP)
    wrong = next(n for n in range(1000) if not meets(challenge, str(n), 6))
    assert work.verify(challenge, str(wrong), IP) is None
    assert work.redeem(challenge, str(wrong), IP) is None


def test_only_the_canonical_counter_text_counts(work: WorkChallenge):
    challenge = work.issue(IP)
    counter = solve(challenge, 6)
    assert counter is not None
    text = str(counter)
    arabic = text.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    for spelling in ("0" + text, "+" + text, f" {text}", f"{text} ", arabic, f"{text}.0",
                     "-" + text, "", "1" * 17, True, float(counter), -counter - 1):
        assert work.verify(challenge, spelling, IP) is None, spelling


def test_a_solution_is_bound_to_the_network(work: WorkChallenge):
    challenge = work.issue(IP)
    counter = solve(challenge, 6)
    assert work.verify(challenge, counter, "198.51.100.9") is None
    assert work.redeem(challenge, counter, "198.51.100.9") is None
    challenge6 = work.issue(IP6)
    counter6 = solve(challenge6, 6)
    assert work.verify(challenge6, counter6, "2001:db8:1:9::1") is not None
    assert work.verify(challenge6, counter6, "2001:db8:9::1") is None


def test_a_challenge_expires(work: WorkChallenge, clock: FakeClock):
    challenge = work.issue(IP)
    counter = solve(challenge, 6)
    clock.advance(119)
    assert work.verify(challenge, counter, IP) is not None
    clock.advance(1)
    assert work.verify(challenge, counter, IP) is None
    assert work.redeem(challenge, counter, IP) is None


def test_a_challenge_from_the_future_is_refused(clock: FakeClock):
    ahead = WorkChallenge(PassSigner(KEY, clock=FakeClock(clock.now + MAX_SKEW + 1)),
                          difficulty=4)
    challenge = ahead.issue(IP)
    here = WorkChallenge(PassSigner(KEY, clock=clock), difficulty=4)
    assert here.verify(challenge, solve(challenge, 4), IP) is None


def test_a_challenge_of_another_key_is_refused(clock: FakeClock):
    theirs = WorkChallenge(PassSigner(OTHER_KEY, clock=clock), difficulty=4)
    challenge = theirs.issue(IP)
    counter = solve(challenge, 4)
    assert theirs.verify(challenge, counter, IP) is not None
    assert WorkChallenge(PassSigner(KEY, clock=clock), difficulty=4).verify(
        challenge, counter, IP) is None


def test_a_tampered_challenge_is_refused(work: WorkChallenge):
    challenge = work.issue(IP)
    for i, old in enumerate(challenge):
        new = "A" if old != "A" else "B"
        changed = challenge[:i] + new + challenge[i + 1 :]
        # solve the tampered text, so only the MAC can refuse it
        assert work.verify(changed, solve(changed, 6), IP) is None, i


def test_a_raised_difficulty_refuses_easier_challenges(signer: PassSigner):
    easy = WorkChallenge(signer, difficulty=2)
    challenge = easy.issue(IP)
    counter = next(n for n in range(10_000) if meets(challenge, str(n), 2)
                   and not meets(challenge, str(n), 8))
    assert easy.verify(challenge, counter, IP) is not None
    assert WorkChallenge(signer, difficulty=8).verify(challenge, counter, IP) is None


def test_replaying_a_solution_yields_the_same_pass_id(work: WorkChallenge, signer: PassSigner,
                                                      clock: FakeClock):
    challenge = work.issue(IP)
    counter = solve(challenge, 6)
    first = signer.verify(work.redeem(challenge, counter, IP), IP)
    clock.advance(30)
    again = signer.verify(work.redeem(challenge, counter, "203.0.113.10"), IP)
    other_challenge = work.issue(IP)
    other = signer.verify(work.redeem(other_challenge, solve(other_challenge, 6), IP), IP)
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"difficulty": 0}, "difficulty must be an integer in 1..32, got 0"),
        ({"difficulty": 33}, "got 33"),
        ({"difficulty": True}, "got True"),
        ({"difficulty": 8.0}, "got 8.0"),
        ({"ttl": 0.5}, "ttl must be"),
    ],
)
def test_bad_work_settings_are_config_errors(
    signer: PassSigner, kwargs: dict[str, object], message: str
):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WorkChallenge(signer, **kwargs)  # type: ignore[arg-type]


# -- pages --------------------------------------------------------------------------------

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})


class Page(HTMLParser):
    """A strict reading of a page: every element closed in order, nothing left open."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self.doctype = ""
        self.feed(text)
        self.close()
        assert not self.open, f"left open: {self.open}"

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = [name for name, _ in attrs]
        assert len(names) == len(set(names)), f"repeated attribute in <{tag}>"
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise AssertionError(f"self-closing <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"</{tag}>"
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] == "script":
            self.scripts.append(data)
        elif self.open and self.open[-1] == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]

    def field(self, name: str) -> str | None:
        (found,) = [a for a in self.tags("input") if a.get("name") == name]
        return found.get("value")


def headers_of(denial: object) -> dict[str, str]:
    return dict(denial.headers)  # type: ignore[attr-defined]


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_work_page_is_well_formed_and_self_contained(work: WorkChallenge):
    challenge = work.issue(IP)
    denial = work_page(challenge, 6, action="/.challenge", return_to="/shop?item=3&q=a%20b")
    assert denial.status == 200
    headers = headers_of(denial)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Content-Length"]) == len(denial.body)
    page = Page(denial.body.decode("utf-8"))
    assert page.doctype.lower() == "doctype html"
    assert [tag for tag, _ in page.elements][:2] == ["html", "head"]
    (form,) = page.tags("form")
    assert (form["method"], form["action"], form["data-difficulty"]) == ("post", "/.challenge", "6")
    assert page.field("challenge") == challenge
    assert page.field("solution") == ""
    assert page.field("return_to") == "/shop?item=3&q=a%20b"
    # nothing from elsewhere: no src, href or url() anywhere, one inline script and style
    assert not [attrs for _, attrs in page.elements if {"src", "href"} & attrs.keys()]
    assert "url(" not in "".join(page.styles)
    assert len(page.scripts) == 1 and len(page.styles) == 1
    assert "crypto.subtle.digest" in page.scripts[0]
    assert len(page.tags("noscript")) == 1
    # the policy allows exactly the page's own script and style
    csp = headers["Content-Security-Policy"]
    assert f"script-src {csp_hash(page.scripts[0])};" in csp
    assert f"style-src {csp_hash(page.styles[0])};" in csp
    assert "default-src 'none'" in csp and "form-action 'self'" in csp


def test_the_work_page_escapes_a_hostile_url():
    denial = work_page("c", 6, action=HOSTILE, return_to=HOSTILE)
    body = denial.body.decode()
    page = Page(body)
    assert len(page.tags("script")) == 1 and not page.tags("img")
    assert "<script>alert" not in body and "onerror" not in "".join(
        name for _, attrs in page.elements for name in attrs)
    assert page.field("return_to") == safe_path(HOSTILE)
    assert page.tags("form")[0]["action"] == safe_path(HOSTILE)
    assert not set("\"'<> ") & set(safe_path(HOSTILE))


@given(challenge=st.text(), return_to=st.text(), action=st.text())
def test_the_work_page_holds_any_text(challenge: str, return_to: str, action: str):
    page = Page(work_page(challenge, 6, action=action, return_to=return_to).body.decode())
    assert len(page.tags("script")) == 1 and len(page.tags("input")) == 3
    expected = challenge.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    assert page.field("challenge") in (challenge, expected)
    assert page.field("return_to") == safe_path(return_to)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_script_finds_a_solution_python_accepts(work: WorkChallenge):
    """The page's own script, run by node (Web Crypto as in a browser) with a stand-in
    for the form, submits a counter the server accepts."""
    challenge = work.issue(IP)
    page = Page(work_page(challenge, 6, action="/c", return_to="/").body.decode())
    stub = """
    const fields = {challenge: {value: CHALLENGE}, solution: {value: ""}};
    const form = {elements: fields, getAttribute: () => "6",
                  submit() { console.log(JSON.stringify(fields.solution.value)); }};
    globalThis.window = globalThis;
    globalThis.document = {getElementById: (id) => id === "tk-work" ? form : {}};
    """.replace("CHALLENGE", json.dumps(challenge))
    out = subprocess.run(["node", "-e", stub + page.scripts[0]], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    counter = json.loads(out)
    assert counter == str(solve(challenge, 6))  # the first solution, as in Python
    assert work.verify(challenge, counter, IP) is not None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/shop?item=3&q=a%20b", "/shop?item=3&q=a%20b"),
        ("/a/b;c=d?e=f:g@h!$()*+,~-._", "/a/b;c=d?e=f:g@h!$()*+,~-._"),
        ("/it's", "/it%27s"),
        ("/caf\u00e9", "/caf%C3%A9"),
        ("/a#frag", "/a%23frag"),
        ("/a b", "/a%20b"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/%5Cevil.example"),
        ("/\t/evil.example", "/%09/evil.example"),
        ("/\r\nSet-Cookie: x=1", "/%0D%0ASet-Cookie:%20x=1"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("", "/"),
        (None, "/"),
        (b"/bytes", "/"),
        ("/" + "a" * 2048, "/"),
    ],
)
def test_safe_path(target: object, expected: str):
    assert safe_path(target) == expected


@given(st.text())
def test_safe_path_stays_on_this_site(target: str):
    path = safe_path(target)
    assert path.startswith("/") and not path.startswith("//")
    assert re.fullmatch(r"[A-Za-z0-9/?&=%:@!$()*+,;~._-]+", path)


def test_pass_cookie():
    assert pass_cookie("abc", max_age=3600.0, secure=True) == (
        f"{COOKIE_NAME}=abc; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
    )
    assert pass_cookie("abc", max_age=59.5, secure=False, name="__tk", path="/app") == (
        "__tk=abc; Path=/app; Max-Age=60; HttpOnly; SameSite=Lax"
    )
    for bad in ({"name": "a b"}, {"name": ""}, {"name": "a=b"}, {"path": "/;x"}):
        with pytest.raises(ValueError):
            pass_cookie("abc", max_age=1, secure=True, **bad)  # type: ignore[arg-type]
    for value in ("a;b", "a b", 'a"', "a\r\nX: y", "é"):
        with pytest.raises(ValueError):
            pass_cookie(value, max_age=1, secure=True)


def test_the_cookie_round_trip_is_a_303_back_with_the_pass(signer: PassSigner):
    value = signer.issue(IP)
    cookie = pass_cookie(value, max_age=signer.ttl, secure=True)
    denial = pass_redirect("/shop?item=3", cookie)
    assert denial.status == 303
    headers = headers_of(denial)
    assert headers["Location"] == "/shop?item=3"
    assert headers["Set-Cookie"] == cookie
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Content-Length"]) == len(denial.body)
    page = Page(denial.body.decode())
    assert not page.tags("script")  # nothing to run: the link is the fallback
    assert [a["href"] for a in page.tags("a")] == ["/shop?item=3"]
    # what the client sends back is a pass
    assert signer.verify(cookie.split(";")[0].partition("=")[2], IP) is not None


def test_the_redirect_escapes_a_hostile_url():
    denial = pass_redirect(HOSTILE, "throttlekit_pass=x")
    page = Page(denial.body.decode())
    assert not page.tags("script") and not page.tags("img")
    assert headers_of(denial)["Location"] == page.tags("a")[0]["href"] == safe_path(HOSTILE)
    assert pass_redirect("//evil.example", "c=x").headers[0] == ("Location", "/")


def test_read_answer():
    body = urlencode({"challenge": "abc", "solution": "42", "return_to": "/a?b=c"}).encode()
    assert read_answer(body) == Answer("abc", "42", "/a?b=c")
    assert read_answer(b"challenge=abc&solution=42") == Answer("abc", "42", "/")
    assert read_answer(b"challenge=abc&solution=&return_to=//evil") == Answer("abc", "", "/")
    for bad in (b"", b"challenge=abc", b"solution=1", b"challenge=\xff&solution=1",
                b"challenge=a&solution=1&" + b"x=1&" * 8, b"challenge=" + b"a" * 5000,
                "challenge=a&solution=1"):
        assert read_answer(bad) is None, bad  # type: ignore[arg-type]


@given(st.binary(max_size=600) | st.text().map(str.encode))
def test_read_answer_never_raises(body: bytes):
    answer = read_answer(body)
    assert answer is None or answer.return_to == safe_path(answer.return_to)


def test_the_whole_work_round_trip(work: WorkChallenge, signer: PassSigner):
    """Page, browser (in Python), post, pass, cookie, next request."""
    denial = work_page(work.issue(IP), work.difficulty, action="/.challenge",
                       return_to="/shop?item=3")
    page = Page(denial.body.decode())
    challenge = page.field("challenge")
    assert challenge is not None
    posted = urlencode({"challenge": challenge, "solution": solve(challenge, work.difficulty),
                        "return_to": page.field("return_to")}).encode()
    answer = read_answer(posted)
    assert answer is not None
    value = work.redeem(answer.challenge, answer.solution, "203.0.113.99")
    assert value is not None
    back = pass_redirect(answer.return_to, pass_cookie(value, max_age=signer.ttl, secure=True))
    assert (back.status, headers_of(back)["Location"]) == (303, "/shop?item=3")
    assert signer.verify(value, IP) is not None

