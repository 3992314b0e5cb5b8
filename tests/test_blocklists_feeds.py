"""Community feeds an operator does not control: an entry too wide to be true, a file
replaced without its stamp changing, a relative path in a rules file."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from test_blocklists import ListServer, _app, _status, view
from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.blocklists import Blocklist, parse_list
from throttlekit.testing import FakeClock

POISONED = """\
192.0.2.7
0.0.0.0/0
::/0
10.0.0.0/7
2001:db8::/32
"""


def test_a_feed_holding_every_address_blocks_only_its_real_entries(tmp_path: Path,
                                                                   caplog: Any) -> None:
    """0.0.0.0/0, ::/0 and a /7 in a feed are skipped (logged, named); the feed's real
    entries still block; a visitor from anywhere else is served."""
    path = tmp_path / "feed.txt"
    path.write_text(POISONED)
    lim = Limiter()
    with caplog.at_level(logging.WARNING, logger="throttlekit.blocklists"):
        lim.blocklist("feed", Blocklist(path))
    mw = WSGIMiddleware(_app, lim)
    assert [_status(mw, ip) for ip in ("192.0.2.7", "2001:db8::5", "198.51.100.4",
                                       "10.1.2.3", "2a00:1450::1")] == [
        "403", "403", "200", "200", "200"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 entries" in warned and "0.0.0.0/0" in warned


def test_min_prefix_sets_the_widest_entry_kept() -> None:
    """(0, 0) keeps everything (an operator who means it); (24, 48) keeps only narrow
    networks; the boundary itself is kept."""
    text = "0.0.0.0/0\n198.51.100.0/24\n203.0.0.0/16\n2001:db8::/48\n2001:db8::/32\n"
    assert len(parse_list(text, min_prefix=(0, 0))) == 5
    kept = parse_list(text, min_prefix=(24, 48))
    assert sorted(p for _, _, p in kept) == [24, 48]


def test_a_crowdsec_stream_range_too_wide_is_skipped(caplog: Any) -> None:
    """A LAPI stream's Range decision of 0.0.0.0/1 is not applied; its Ip bans are."""
    server = ListServer()
    try:
        server.serve(json.dumps({"new": [
            {"value": "0.0.0.0/1", "scope": "Range", "type": "ban"},
            {"value": "192.0.2.1", "scope": "Ip", "type": "ban"}], "deleted": []}))
        with caplog.at_level(logging.WARNING, logger="throttlekit.blocklists"):
            bl = Blocklist(server.url + "/v1/decisions/stream", clock=FakeClock(0.0))
        assert bl(view("192.0.2.1")) and not bl(view("100.64.1.1")) and len(bl) == 1
        assert any("0.0.0.0/1" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


@pytest.mark.parametrize("bad", [(8,), (33, 32), (8, 129), (-1, 32), ("8", 32), (True, 32),
                                 8, None])
def test_a_bad_min_prefix_is_a_config_error(tmp_path: Path, bad: Any) -> None:
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.7\n")
    with pytest.raises(ConfigError, match="min_prefix"):
        Blocklist(path, min_prefix=bad)


def test_a_file_rewritten_with_its_old_modification_time_is_reloaded(tmp_path: Path) -> None:
    """cp -p, rsync -t and tar keep the modification time: a new list of the same size
    with the old mtime is still picked up on the next refresh."""
    clock = FakeClock(1000.0)
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.1\n")
    old = path.stat().st_mtime_ns
    bl = Blocklist(path, refresh=60, clock=clock)
    path.write_text("192.0.2.2\n")  # same size
    os.utime(path, ns=(old, old))
    clock.advance(60)
    assert bl(view("192.0.2.2")) and not bl(view("192.0.2.1"))


def test_a_file_swapped_in_by_rename_with_the_same_stamp_is_reloaded(tmp_path: Path) -> None:
    """An atomic replace (write a temp file, rename it over the list) carrying the old
    file's size and modification time is reloaded."""
    clock = FakeClock(1000.0)
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.1\n")
    old = path.stat().st_mtime_ns
    bl = Blocklist(path, refresh=60, clock=clock)
    tmp = tmp_path / "feed.txt.new"
    tmp.write_text("192.0.2.3\n")
    os.utime(tmp, ns=(old, old))
    os.replace(tmp, path)
    clock.advance(60)
    assert bl(view("192.0.2.3")) and not bl(view("192.0.2.1"))


def test_a_file_touched_without_changes_keeps_its_parsed_list(tmp_path: Path) -> None:
    """A new stamp over the same content is not parsed again: the set in force stays."""
    clock = FakeClock(1000.0)
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.1\n")
    bl = Blocklist(path, refresh=60, clock=clock)
    before = bl.ipset
    path.write_text("192.0.2.1\n")
    os.utime(path, ns=(1, 1))
    clock.advance(60)
    assert bl(view("192.0.2.1")) and bl.ipset is before


def test_a_relative_ips_from_is_read_beside_the_rules_file(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    """ips_from = "drop.txt" in /etc/app/rules.toml reads /etc/app/drop.txt, whatever the
    working directory of the process that loads it."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "drop.txt").write_text("192.0.2.7\n")
    (conf / "rules.toml").write_text(textwrap.dedent('''
        [[blocklist]]
        name = "drop"
        ips_from = "drop.txt"
    '''))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "drop.txt").write_text("198.51.100.1\n")  # the wrong one, if cwd were used
    monkeypatch.chdir(elsewhere)
    lim = Limiter()
    lim.load_rules(conf / "rules.toml")
    mw = WSGIMiddleware(_app, lim)
    assert [_status(mw, ip) for ip in ("192.0.2.7", "198.51.100.1")] == ["403", "200"]


def test_min_prefix_in_a_rules_file(tmp_path: Path) -> None:
    """ips_from's min_prefix = [0, 0] keeps a feed's wide entry; a bad one is an error at
    its line."""
    (tmp_path / "wide.txt").write_text("198.51.0.0/16\n")
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent('''
        [[blocklist]]
        name = "wide"
        ips_from = { source = "wide.txt", min_prefix = [16, 32] }
    '''))
    lim = Limiter()
    lim.load_rules(path)
    assert _status(WSGIMiddleware(_app, lim), "198.51.7.7") == "403"
    path.write_text(textwrap.dedent('''
        [[blocklist]]
        name = "wide"
        ips_from = { source = "wide.txt", min_prefix = [40, 32] }
    '''))
    with pytest.raises(ConfigError, match=r"min_prefix.*\[40, 32\]|min_prefix.*\(40, 32\)"):
        Limiter().load_rules(path)
