"""`throttlekit inspect` on a throttle with plans (issue 16): a row per plan and rate, each
reading the rule's one count (a plan change keeps it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_admin_cli import REDIS, tk
from throttlekit import Limiter, RequestView, storage_from_url

# (a sliding log: the CLI inspects on the real clock, where a fixed window resets when an
# hour boundary falls between the requests and the inspection)
RULES = """\
[[throttle]]
name = "api"
key = "header:X-Api-Key"
strategy = "sliding_log"

[throttle.rates]
plan = "header:X-Plan"
default = "free"

[throttle.rates.plans]
free = "5/hour"
pro = "100/hour; 10/second"
"""


@pytest.fixture
def store(_backend_contexts: dict[str, object]) -> Iterator[str]:
    ctx = _backend_contexts["get"]("redis")  # type: ignore[operator]  # skips without Redis
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    ctx.prefixes.append(prefix)  # type: ignore[attr-defined]  # the session deletes them
    yield f"{REDIS}?prefix={prefix}"


@pytest.mark.redis
def test_inspect_shows_each_plan_of_a_rule(store: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    lim = Limiter(storage_from_url(store), denial_cache_size=0)
    lim.load_rules(rules)
    for plan in ("free", "free", "pro"):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1",
                   "HTTP_X_API_KEY": "k1", "HTTP_X_PLAN": plan}
        assert lim.evaluate(RequestView.from_environ(environ, lim.resolver)).allowed
    lim.storage.close()
    p = tk("inspect", "k1", "--storage", store, "--rules", str(rules), "--json")
    assert p.returncode == 0, p.stderr
    rows = [(r["rule"], r["plan"], r["limit"], r["remaining"])
            for r in json.loads(p.stdout)["rules"]]
    # the hour's count is the rule's, whatever plan made it: 3 used of 5, of 100
    assert rows[:2] == [("api", "free", "5/3600s", 2), ("api", "pro", "100/3600s", 97)]
    assert rows[2][:3] == ("api/1", "pro", "10/1s") and rows[2][3] in (9, 10)  # real time
    table = tk("inspect", "k1", "--storage", store, "--rules", str(rules)).stdout
    assert "api [plan free]" in table and "api/1 [plan pro]" in table
