"""Deeply nested rules files are ConfigErrors, at load, in `check` and on a live reload."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.cli import main
from throttlekit.testing import FakeClock

GOOD = '[[throttle]]\nname = "per-ip"\nrates = "2/minute"\nstrategy = "fixed_window"\n'
DEEP = {
    "arrays": GOOD + "header = " + "[" * 300 + "]" * 300 + "\n",
    "inline-tables": "x = " + "{a=" * 400 + "1" + "}" * 400 + "\n",
    "arrays-in-a-list": '[[throttle]]\nname = "t"\nrates = ' + "[" * 2000 + "]" * 2000 + "\n",
}


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("text", list(DEEP.values()), ids=list(DEEP))
def test_deep_nesting_is_a_config_error(tmp_path: Path, text: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Hundreds of nested arrays or tables raise ConfigError (not RecursionError), and
    `throttlekit check` answers with an error, not a traceback."""
    f = tmp_path / "rules.toml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        Limiter.from_file(f)
    assert main(["check", str(f)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "error" in captured.out + captured.err


def test_deep_nesting_on_reload_keeps_the_rules_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A live reload of such a file keeps the rules in force and logs the rejection once,
    not at every check."""
    f = tmp_path / "rules.toml"
    f.write_text(GOOD)
    # (exact counts: a clock of its own)
    limiter = Limiter.from_file(f, reload_interval=0, clock=FakeClock())
    c = Client(WSGIMiddleware(app, limiter))
    tmp = f.with_suffix(".tmp")
    tmp.write_text(DEEP["inline-tables"])
    os.replace(tmp, f)
    time.sleep(0.01)  # a new mtime for the watcher (file polling, not limit logic)
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        got = [c.get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code
               for _ in range(5)]
    assert got == [200, 200, 429, 429, 429]  # still the old 2/minute
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "nested too deeply" in rejected[0].getMessage()
