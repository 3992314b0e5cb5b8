"""Live reload of a rules file: atomic swaps, rejected bad files, signals, and under load."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Always 200."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def rules(limit: int, extra: str = "") -> str:
    return (f'[[throttle]]\nname = "per-ip"\nrates = "{limit}/minute"\n'
            f'strategy = "fixed_window"\n{extra}')


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and config management do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    f = tmp_path / "rules.toml"
    f.write_text(rules(2))
    return f


@pytest.fixture
def limiter(rules_file: Path, clock: FakeClock) -> Limiter:
    clock.set(1_700_000_040.0)
    return Limiter.from_file(rules_file, clock=clock)


def statuses(c: Client, n: int, ip: str = "198.51.100.7") -> list[int]:
    return [c.get("/", environ_base={"REMOTE_ADDR": ip}).status_code for _ in range(n)]


def test_reload_applies_new_rules_and_keeps_counters(limiter: Limiter, rules_file: Path
                                                     ) -> None:
    """limiter.reload() swaps in the file's new rules; counts made so far still count."""
    c = Client(WSGIMiddleware(app, limiter))
    assert statuses(c, 2) == [200, 200]
    write(rules_file, rules(3))
    assert limiter.reload() is True
    assert statuses(c, 2) == [200, 429]  # 2 used of the new 3, not a fresh quota


def test_bad_file_is_rejected_and_old_rules_stay(limiter: Limiter, rules_file: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A file with errors is not loaded; the rules in force stay, the errors are logged."""
    c = Client(WSGIMiddleware(app, limiter))
    write(rules_file, rules(100) + '[[throttle]]\nname = "x"\nrates = "5/fortnight"\n')
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        assert limiter.reload() is False
    assert "rejected" in caplog.text and ":7: [[throttle]] 'x': bad rate" in caplog.text
    assert statuses(c, 3) == [200, 200, 429]  # still 2/minute
    assert limiter.engine.watcher is not None and limiter.engine.watcher.last_error is not None


def test_lazy_watch_reloads_on_a_request_after_the_interval(rules_file: Path,
                                                            clock: FakeClock) -> None:
    """With reload_interval, a request after the interval notices the changed file."""
    limiter = Limiter.from_file(rules_file, clock=clock, reload_interval=0.01)
    c = Client(WSGIMiddleware(app, limiter))
    assert statuses(c, 3) == [200, 200, 429]
    write(rules_file, rules(10))
    time.sleep(0.02)  # the watch interval (file polling), not limit logic
    assert statuses(c, 1) == [200]
    assert limiter.engine.watcher is not None and limiter.engine.watcher.reloads == 2


def test_no_reload_without_interval_until_asked(limiter: Limiter, rules_file: Path) -> None:
    """Without reload_interval nothing watches the file: changes wait for reload()."""
    c = Client(WSGIMiddleware(app, limiter))
    write(rules_file, rules(10))
    assert statuses(c, 3) == [200, 200, 429]
    assert limiter.reload()
    assert statuses(c, 1) == [200]


def test_signal_marks_a_reload_for_the_next_request(limiter: Limiter, rules_file: Path
                                                    ) -> None:
    """reload_on_signal: the signal makes the next request reload the file."""
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        limiter.reload_on_signal(signal.SIGUSR1)
        c = Client(WSGIMiddleware(app, limiter))
        write(rules_file, rules(10))
        assert statuses(c, 3) == [200, 200, 429]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert statuses(c, 1) == [200]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_code_rules_and_subscribers_survive_reload(limiter: Limiter, rules_file: Path
                                                   ) -> None:
    """Rules registered in code and event subscribers are kept across reloads."""
    limiter.blocklist("no-admin", lambda r: r.path == "/admin")
    seen: list[str] = []
    limiter.on("blocked", lambda e: seen.append(e.rule))
    write(rules_file, rules(5) + '[[track]]\nname = "t"\npath = "/x"\n')
    assert limiter.reload()
    c = Client(WSGIMiddleware(app, limiter))
    assert c.get("/admin").status_code == 403
    assert seen == ["no-admin"]
    assert set(limiter.engine.rules.names) == {"no-admin", "per-ip", "t"}
    write(rules_file, rules(5))  # a rule removed from the file goes away
    assert limiter.reload()
    assert set(limiter.engine.rules.names) == {"no-admin", "per-ip"}


def test_a_file_rule_clashing_with_a_code_rule_is_rejected(limiter: Limiter, rules_file: Path
                                                           ) -> None:
    """A file rule named like a rule in code is an error with its line; nothing changes."""
    limiter.throttle("api", "1/second")
    write(rules_file, rules(5) + '[[throttle]]\nname = "api"\nrates = "2/second"\n')
    assert limiter.reload() is False
    assert limiter.engine.watcher is not None and limiter.engine.watcher.last_error is not None
    assert ":5:" in str(limiter.engine.watcher.last_error)


def test_middleware_rules_file_option(rules_file: Path, clock: FakeClock) -> None:
    """WSGIMiddleware(rules_file=...) loads the file into the limiter it is given."""
    limiter = Limiter(clock=clock)
    c = Client(WSGIMiddleware(app, limiter, rules_file=rules_file))
    assert statuses(c, 3) == [200, 200, 429]
    with pytest.raises(ConfigError, match="already has a rules file"):
        WSGIMiddleware(app, limiter, rules_file=rules_file)


def test_reload_without_a_file_is_a_config_error() -> None:
    """reload() on a limiter built in code says there is no file."""
    with pytest.raises(ConfigError, match="no rules file"):
        Limiter().reload()


def test_reload_under_load_never_drops_or_errors_a_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads hammer the app while the file changes (and is sometimes broken): every request
    gets the answer of one complete rule set."""
    f = tmp_path / "rules.toml"
    generous = rules(10**9)
    # a second valid set: blocks a path nobody asks for, and a track
    other = rules(10**9 - 1, '[[blocklist]]\nname = "never"\npath = "/never"\n'
                             '[[track]]\nname = "t"\npath = "/"\n')
    f.write_text(generous)
    limiter = Limiter.from_file(f, reload_interval=0.001)
    mw = WSGIMiddleware(app, limiter)
    results: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        c = Client(mw)
        try:
            while not stop.is_set():
                r = c.get("/", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"})
                results.append(r.status_code)
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        for t in threads:
            t.start()
        for i in range(60):
            if i % 10 == 9:
                f.write_text(generous + '[[throttle]]\nname = "bad"\nrates = "x"\n')  # broken
            else:
                write(f, generous if i % 2 else other)
            time.sleep(0.005)
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures
    assert len(results) > 200
    assert set(results) == {200}
    assert limiter.engine.watcher is not None and limiter.engine.watcher.reloads > 10
    # only the broken versions are logged, as rejected files
    assert all("rejected" in r.getMessage() for r in caplog.records)


def test_reload_interval_zero_checks_on_every_request(rules_file: Path) -> None:
    """reload_interval=0 is accepted and the very next request sees a changed file."""
    # (exact counts: a clock of its own)
    limiter = Limiter.from_file(rules_file, reload_interval=0, clock=FakeClock())
    c = Client(WSGIMiddleware(app, limiter))
    assert statuses(c, 3) == [200, 200, 429]
    write(rules_file, rules(2, '[[blocklist]]\nname = "bad"\nips = ["198.51.100.7"]\n'))
    assert statuses(c, 1) == [403]
    with pytest.raises(ConfigError, match="reload_interval"):
        Limiter.from_file(rules_file, reload_interval=-1)


BLOCK = '[[blocklist]]\nname = "bad"\nips = ["198.51.100.7"]\n'


def test_an_emptied_file_keeps_the_rules_in_force(rules_file: Path) -> None:
    """A 0-byte rules file (a rewrite in place, truncated) never replaces the rules."""
    rules_file.write_text(rules(100, BLOCK))
    limiter = Limiter.from_file(rules_file, reload_interval=0)
    c = Client(WSGIMiddleware(app, limiter))
    rules_file.write_text("")
    assert statuses(c, 3) == [403, 403, 403]
    assert limiter.reload() is False
    assert statuses(c, 1) == [403]


@pytest.mark.slow
def test_rewriting_in_place_under_load_never_lifts_a_block(rules_file: Path) -> None:
    """Threads hammer the app while the file is rewritten in place: the blocked IP stays 403."""
    rules_file.write_text(rules(1000, BLOCK))
    limiter = Limiter.from_file(rules_file, reload_interval=0)
    mw = WSGIMiddleware(app, limiter)
    stop = threading.Event()
    seen: list[int] = []

    def hammer() -> None:
        c = Client(mw)
        while not stop.is_set():
            seen.append(c.get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(80):
            with open(rules_file, "w") as f:  # truncates, then writes: not atomic
                f.write(rules(1000 + k, BLOCK))
            time.sleep(0.002)  # the writer's pace, not limit logic
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 100 and set(seen) == {403}
    assert limiter.engine.watcher is not None and limiter.engine.watcher.reloads > 1
