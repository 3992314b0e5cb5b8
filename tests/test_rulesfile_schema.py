"""The rules-file schema and the Limiter API cannot drift apart: every kind of table takes the
keyword arguments of its Limiter method (conditions standing for ``match``), and a table
giving every field compiles to arguments the public method accepts."""

from __future__ import annotations

import atexit
import inspect
import re
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from throttlekit import ConfigError, Limiter
from throttlekit._rulesfile import LIMITER_FIELDS, parse_rules
from throttlekit._rulesfile.schema import CONDITIONS, KINDS, SHEDDING, Kind

ALL_KINDS = [*KINDS, SHEDDING]
#: a community list for ips_from (the condition loads it when the file is read)
_LIST = Path(tempfile.mkdtemp(prefix="tk-schema-")) / "drop.txt"
_LIST.write_text("203.0.113.0/24\n")
atexit.register(shutil.rmtree, _LIST.parent, True)
_CONDS = 'path = "/x"\npath_prefix = "/x"\nmethod = "POST"\nips = ["10.0.0.0/8"]\n' \
         'header = { name = "User-Agent", contains = "bot" }\nmatch = "os.path:isabs"\n' \
         f'ips_from = "{_LIST}"\n'
#: one table per kind giving every field it has (test_every_field_is_sampled checks that)
FULL = {
    "safelist": _CONDS,
    "blocklist": _CONDS,
    "fail2ban": _CONDS + 'key = "ip"\nmaxretry = 3\nfindtime = "10m"\nbantime = "1h"\n'
                'escalate = true\n',
    "allow2ban": _CONDS + 'key = "ip"\nmaxretry = 3\nfindtime = "10m"\nbantime = "1h"\n'
                 'escalate = { max_ban = "1d", forget_after = "7d", jitter = 0.1, factor = 3 }\n',
    "throttle": _CONDS + 'rates = "5/minute"\nkey = "header:X-Key"\nstrategy = "token_bucket"\n'
                'cost = 2\nburst = 7\ndry_run = true\ncount_when = [401, "5xx"]\n'
                'on_unreadable = "refuse"\n',
    "track": _CONDS + 'key = "path"\n',
    "concurrency": _CONDS + 'limit = 2\nkey = "client"\ntimeout = "30s"\nretry_after = 5\n',
    "shedding": 'capacity = 10\npriority = "os.path:isabs"\nthresholds = [0.5, 1.0]\n'
                'timeout = "30s"\nretry_after = 5\n',
}


def _parameters(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"self"}  # type: ignore[arg-type]


def _table(kind: Kind) -> str:
    if kind.rule:
        return f'[[{kind.name}]]\nname = "r"\n{FULL[kind.name]}'
    return f"[{kind.name}]\n{FULL[kind.name]}"


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.name)
def test_fields_are_the_keyword_arguments_of_the_limiter_method(kind: Kind) -> None:
    """The file's fields, once the conditions become ``match`` (``predicate``/``ips``), are
    exactly what ``Limiter.<method>`` takes: a parameter added to the API needs a field."""
    assert kind.arguments() == _parameters(getattr(Limiter, kind.method))


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.name)
def test_the_listed_fields_are_the_fields(kind: Kind) -> None:
    """The ``takes:`` hint lists every field once, and nothing else."""
    own = {f.name for f in kind.fields}
    expected = {"name", *(c.name for c in CONDITIONS), *own} if kind.rule else own
    assert sorted(kind.names()) == sorted(expected)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.name)
def test_every_field_is_sampled(kind: Kind) -> None:
    """FULL gives each kind every field (so the next test covers every field)."""
    given = re.findall(r"^(\w+) =", _table(kind), re.MULTILINE)
    assert sorted(given) == sorted(kind.names())


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.name)
def test_a_full_table_registers_through_the_public_method(kind: Kind) -> None:
    """What a table with every field compiles to is accepted, as keyword arguments, by the
    public Limiter method of its kind, and the rule is then in force."""
    ruleset = parse_rules(textwrap.dedent(_table(kind)), "r.toml")
    spec = ruleset.shedding if not kind.rule else ruleset.rules[0]
    assert spec is not None
    assert set(spec.kwargs) <= _parameters(getattr(Limiter, kind.method))
    limiter = Limiter()
    method = getattr(limiter, kind.method)
    if kind.rule:
        method(spec.name, **spec.kwargs)
    else:
        method(**spec.kwargs)
    if kind.name == "concurrency":
        with pytest.raises(ConfigError, match="duplicate rule name 'r'"):
            limiter.concurrency("r", 1)
    elif kind.rule:
        with pytest.raises(ConfigError, match="duplicate rule name 'r'"):
            limiter.track("r")

def test_limiter_settings_are_limiter_arguments() -> None:
    """Every setting a [limiter] table may hold is a keyword argument of Limiter."""
    assert set(LIMITER_FIELDS) <= _parameters(Limiter.__init__)
