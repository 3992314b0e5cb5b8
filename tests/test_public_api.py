"""The public surface: what `import throttlekit` offers, and the README's snippet."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import throttlekit
import throttlekit.testing

ROOT = Path(__file__).resolve().parent.parent


def test_exported_names_are_public_and_documented():
    """Every name in __all__ exists, shows the public module path and has a docstring."""
    for name in throttlekit.__all__:
        obj = getattr(throttlekit, name)
        if isinstance(obj, type):
            assert obj.__module__ == "throttlekit", name
            assert obj.__doc__, name


def test_core_names_fixed_by_the_issue():
    """The names other code relies on are importable from the top level."""
    for name in ("Limiter", "parse_rates", "ConfigError", "Rate", "Decision",
                 "storage_from_url", "MemoryStorage"):
        assert name in throttlekit.__all__
    assert issubclass(throttlekit.ConfigError, ValueError)


def test_import_has_no_side_effects():
    """Importing throttlekit starts no thread and imports no framework or client library."""
    code = (
        "import sys, threading; import throttlekit; "
        "bad = [m for m in ('redis', 'pymemcache', 'flask', 'django', 'starlette', "
        "'prometheus_client') if m in sys.modules]; "
        "assert not bad, bad; assert threading.active_count() == 1; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_docstring_examples_run():
    """The examples in module docstrings are correct."""
    for module in (throttlekit, throttlekit.testing):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_readme_python_snippet_runs():
    """The README's Limiter snippet runs as written."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "user:42" in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)
    assert namespace["d"].allowed is True  # type: ignore[attr-defined]


def test_quickstart_example_shows_the_flooder_limited():
    """examples/quickstart.py runs and throttles the flood."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, check=True,
    ).stdout
    served = {m.group(1): (int(m.group(2)), int(m.group(3)))
              for m in re.finditer(r"(\w+)\s+sent\s+(\d+)\s+served\s+(\d+)", out)}
    assert served["alice"][0] == served["alice"][1]
    assert served["flooder"][1] < served["flooder"][0] / 10


def test_what_the_docs_tell_users_to_import_is_public():
    """Custom responders and the setup check need only top-level names (issue 15 item 4):
    no page of the docs names a private module, and the names they use are exported."""
    for name in ("Denial", "default_responder", "retry_after_header", "ClientIPResolver",
                 "IPSet"):
        assert name in throttlekit.__all__, name
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"throttlekit\._\w", page.read_text()), page.name


def test_public_responder_pieces_work_together():
    """A custom responder built from the public names keeps Retry-After and no-store."""
    d = throttlekit.Decision(False, 5, 0, 30.0, 12.2, throttlekit.Rate(5, 60.0))
    denial = throttlekit.default_responder("throttled", "login", d, "text/html", [])
    assert isinstance(denial, throttlekit.Denial) and denial.status == 429
    assert ("Retry-After", throttlekit.retry_after_header(d.retry_after)) in denial.headers
    assert throttlekit.retry_after_header(12.2) == "13"
    resolver = throttlekit.ClientIPResolver(trusted_proxies=1)
    assert resolver.resolve("10.0.0.1", "198.51.100.1, 203.0.113.9") == "203.0.113.9"
    assert "203.0.113.9" in throttlekit.IPSet(["203.0.113.0/24"])
