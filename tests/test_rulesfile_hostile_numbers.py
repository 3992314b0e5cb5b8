"""Rules files with numbers no field can hold: a ConfigError naming the value and the line,
never an OverflowError (TOML integers are arbitrary-precision Python ints here)."""

from __future__ import annotations

import pytest

from throttlekit import ConfigError
from throttlekit._rulesfile import parse_rules
from throttlekit._rulesfile.fields import parse_duration

HUGE = "1" + "0" * 400


@pytest.mark.parametrize("field", ["bantime", "findtime", "maxretry"])
def test_a_huge_integer_in_a_rules_file_is_a_config_error(field):
    """``bantime = 1000...0`` (400 digits) is refused as out of range, naming the field."""
    values = {"bantime": "600", "findtime": "60", "maxretry": "5"}
    values[field] = HUGE
    text = ('[[fail2ban]]\nname = "login"\nmatch = { path = "/login" }\n'
            + "".join(f"{k} = {v}\n" for k, v in values.items()))
    with pytest.raises(ConfigError, match=field):
        parse_rules(text)


def test_parse_duration_of_a_huge_integer_is_a_config_error():
    """``parse_duration(10**400)`` names the value like any other bad duration."""
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration(10**400)
