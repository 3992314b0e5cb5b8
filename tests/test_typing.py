"""Users' code type-checks against the public API (issue 16, item 8): ``mypy --strict`` on
``tests/typing/user_code.py`` (the docs' usage, Flask/Django/FastAPI included) finds
nothing, and every mistake in ``tests/typing/negative.py`` is reported with its expected
error code (``# type: ignore[code]`` + ``warn_unused_ignores``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"


@pytest.fixture(scope="module")
def mypy_output() -> str:
    """One mypy run over both files, reading throttlekit from this checkout's ``src``."""
    env = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    # mypy's own incremental cache (it re-checks whatever changed): a warm run takes about
    # 1 s of the fast suite's CPU instead of 6; one directory per Python running the tests
    cache = ROOT / ".mypy_cache" / f"test_typing-py{sys.version_info[0]}.{sys.version_info[1]}"
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(TYPING / "mypy.ini"),
         "--cache-dir", str(cache), "--no-error-summary", "--show-error-codes",
         str(TYPING / "user_code.py"), str(TYPING / "negative.py")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    return proc.stdout + proc.stderr


def test_user_code_passes_mypy_strict(mypy_output: str) -> None:
    """The docs' usage of the public API has no type error and no untyped decorator."""
    errors = [line for line in mypy_output.splitlines() if "user_code.py" in line]
    assert errors == []


def test_every_mistake_is_reported_with_its_code(mypy_output: str) -> None:
    """Each line of negative.py is an error of the code it names: none unused, none other."""
    errors = [line for line in mypy_output.splitlines() if "negative.py" in line]
    assert errors == []


def test_negative_file_holds_the_issue_s_mistakes() -> None:
    """``hit("k", 5)`` and a decorated call with a wrong argument are among the checked
    mistakes (so the check above is not vacuous)."""
    text = (TYPING / "negative.py").read_text()
    expected = re.findall(r"# type: ignore\[([a-z-]+)\]", text)
    assert len(expected) >= 20
    assert 'limiter.hit("k", 5)  # type: ignore[arg-type]' in text
    assert 'login(1, "x")  # type: ignore[arg-type]' in text


def test_mypy_reports_nothing_else(mypy_output: str) -> None:
    """No error anywhere else either (a bad config, an import mypy cannot find)."""
    assert mypy_output.strip() == ""
