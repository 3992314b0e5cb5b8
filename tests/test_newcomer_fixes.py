"""Issue 15, item 7: the small things a newcomer trips on, one test each."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from throttlekit import ConfigError, Limiter
from throttlekit._rulesfile import parse_duration
from throttlekit.cli import build_parser, main
from throttlekit.cli._output import plain, token_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "throttlekit"
TOKEN = "a-status-token-of-enough-length"


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


#: every subcommand (test_the_command_list_is_complete keeps it so)
COMMANDS = ["bans", "block", "check", "incident", "inspect", "reset", "rules", "simulate",
            "top", "unblock"]


def _commands() -> list[str]:
    return COMMANDS


def test_the_command_list_is_complete() -> None:
    """COMMANDS names every command `throttlekit --help` lists."""
    listed = re.findall(r"^    (\w+)  ", build_parser().format_help(), re.M)
    assert sorted(listed) == COMMANDS


def test_simulate_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate --help` describes the run without Sphinx roles or literal markup."""
    out = _help(capsys, "simulate")
    assert "replayed twice" in out and "WSGIMiddleware" in out
    assert ":class:" not in out and ":mod:" not in out and "``" not in out and "~" not in out


@pytest.mark.parametrize("command", _commands())
def test_every_command_help_has_a_description(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`throttlekit COMMAND --help` says what the command does, in plain text, before
    its arguments (reset KEY used to print only its usage)."""
    out = _help(capsys, command)
    head = out.split("positional arguments:")[0].split("options:")[0]
    description = head.split("\n\n", 1)[1].strip() if "\n\n" in head else ""
    assert len(description) > 40, f"{command}: {out}"
    assert ":class:" not in out and "``" not in out


def test_reset_help_says_what_is_forgotten_and_what_stays(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """reset's help names the state it forgets and that blocks and bans stay."""
    out = " ".join(_help(capsys, "reset").split())
    assert "throttle" in out and "fail2ban" in out and "Blocks and bans stay" in out


def test_plain_turns_sphinx_markup_into_text() -> None:
    """Roles keep their target (the last part with ``~``), literals lose their quotes."""
    assert plain(":class:`~throttlekit.monitor.Monitor` and :mod:`a.b` with ``--x``") == \
        "Monitor and a.b with --x"


def test_a_duration_before_the_attack_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate scanner --duration N` with N before the attack's start warns on stderr and
    the report says there was no attack instead of "from t=60s" alone."""
    status = main(["simulate", "scanner", "--duration", "5", "--scale", "0.05",
                   "--no-progress"])
    assert status == 0
    captured = capsys.readouterr()
    assert "warning: --duration 5 ends before the attack of scenario 'scanner' starts " \
        "(t=60s)" in captured.err
    assert "no attack in this run: it starts at t=60s, after the run's 5 s" in captured.out
    assert "sent during the attack" not in captured.out
    assert "anomaly detected" not in captured.out


def test_a_duration_past_the_attack_start_does_not_warn(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that reaches the attack has no warning and reports it."""
    assert main(["simulate", "scanner", "--duration", "62", "--scale", "0.02",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "no attack in this run" not in captured.out
    assert "sent during the attack (60-62 s)" in captured.out


def test_quickstart_prints_a_real_retry_after() -> None:
    """examples/quickstart.py shows the flooder's wait mid-window (0.8 s), not 0.0000s."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src")}).stdout
    found = re.search(r"allowed=False retry_after=([\d.]+)s", out)
    assert found is not None, out
    assert float(found.group(1)) == pytest.approx(0.8)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10 minutes", 600.0), ("1 minute", 60.0), ("10 min", 600.0), ("10m", 600.0),
    ("2 Hours", 7200.0), ("1 hr", 3600.0), ("30 seconds", 30.0), ("5 secs", 5.0),
    ("1 day", 86400.0), ("2 days", 172800.0), ("1 week", 604800.0), ("1w", 604800.0),
    ("500 milliseconds", 0.5), ("500ms", 0.5), ("1.5 hours", 5400.0), ("600", 600.0),
])
def test_durations_accept_the_words_rates_accept(text: str, seconds: float) -> None:
    """A duration may name its unit as a rate does ("10 per minute" / "10 minutes")."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10 minutess", "10 mi", "-1 minute",
                                  "10 minutes ago", "minutes"])
def test_durations_still_refuse_what_they_cannot_read(text: str) -> None:
    """Anything else is still a ConfigError naming the value and the accepted forms."""
    with pytest.raises(ConfigError, match=re.escape(repr(text))) as info:
        parse_duration(text)
    assert '"10 minutes"' in str(info.value)


def test_durations_in_words_in_a_rules_file_and_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rules file's findtime/bantime and `block --ttl` take "10 minutes"."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[fail2ban]]\nname = "scan"\npath_prefix = "/wp-admin"\nmaxretry = 3\n'
                     'findtime = "10 minutes"\nbantime = "1 hour"\n')
    assert main(["check", str(rules)]) == 0
    assert "OK (1 rule)" in capsys.readouterr().out
    Limiter.from_file(rules)  # loads
    assert main(["block", "192.0.2.7", "--ttl", "10 minutes", "--storage", "memory://",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ttl"] == 600.0


def test_log_messages_do_not_repeat_the_logger_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected reload logs "rules file ... rejected", not "throttlekit: ...": with the
    usual "%(name)s: %(message)s" format the line says "throttlekit:" once."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "a"\nrates = "5/minute"\n')
    limiter = Limiter.from_file(rules)
    rules.write_text('[[throttle]]\nname = "a"\nrates = "5/fortnight"\n')
    with caplog.at_level(logging.INFO, logger="throttlekit"):
        assert limiter.reload() is False
    (record,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    line = logging.Formatter("%(name)s: %(message)s").format(record)
    assert line.startswith("throttlekit: rules file ") and line.count("throttlekit:") == 1


def test_no_log_call_in_the_package_starts_with_its_name() -> None:
    """Every logging call's message leaves the name to the logger (none says
    "throttlekit: ..."), so no formatter prints it twice."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in {"debug", "info", "warning", "error", "exception", "critical",
                            "log", "_call_each"}:
                continue
            for arg in node.args:
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(
                        arg.values[0], ast.Constant):
                    text = arg.values[0].value
                if isinstance(text, str) and text.startswith("throttlekit:"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"token": None, "token_file": None, **kw})


def test_token_from_option_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--token wins, then --token-file (its first line, stripped), then $THROTTLEKIT_TOKEN."""
    monkeypatch.delenv("THROTTLEKIT_TOKEN", raising=False)
    assert token_of(_args()) is None
    monkeypatch.setenv("THROTTLEKIT_TOKEN", "from-env")
    assert token_of(_args()) == "from-env"
    secret = tmp_path / "token"
    secret.write_text("from-file\nsecond line\n")
    assert token_of(_args(token_file=str(secret))) == "from-file"
    assert token_of(_args(token="from-option", token_file=str(secret))) == "from-option"


def test_a_bad_token_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing or empty token file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"--token-file .*nope"):
        token_of(_args(token_file=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        token_of(_args(token_file=str(empty)))


def test_top_reads_a_served_endpoint_with_the_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`top --url` against a real status endpoint: the token from --token-file or
    $THROTTLEKIT_TOKEN is sent; without one the endpoint refuses (exit 2)."""
    from test_asgi import serve
    from throttlekit.monitor import Monitor
    from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint

    async def not_found(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    endpoint = StatusEndpoint(Monitor(Limiter()), token=TOKEN)
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    monkeypatch.delenv("THROTTLEKIT_TOKEN", raising=False)
    with serve(ASGIStatusMiddleware(not_found, endpoint)) as port:
        url = f"http://127.0.0.1:{port}/throttlekit/status"
        assert main(["top", "--url", url, "--json"]) == 2
        assert "401" in capsys.readouterr().err
        assert main(["top", "--url", url, "--token-file", str(secret), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        monkeypatch.setenv("THROTTLEKIT_TOKEN", TOKEN)
        assert main(["top", "--url", url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_dev_extra_includes_every_feature_extra_the_tests_use() -> None:
    """`pip install -e '.[dev]'` brings matplotlib (the plot extra), so `simulate --plot`
    and its test run in a dev checkout."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    dev = {re.split(r"[<>=\[ ]", r)[0].lower() for r in extras["dev"]}
    for name in ("plot", "redis", "memcached", "flask", "django", "fastapi", "prometheus"):
        for requirement in extras[name]:
            assert re.split(r"[<>=\[ ]", requirement)[0].lower() in dev, (name, requirement)


def test_every_example_is_documented() -> None:
    """Each app in examples/ (the Django project included) is linked from the docs with
    the command that runs it."""
    text = (ROOT / "docs" / "frameworks.md").read_text()
    for example, command in (("flask_app.py", "gunicorn"), ("fastapi_app.py", "uvicorn"),
                             ("django_project/", "shop.asgi:application")):
        assert f"(../examples/{example})" in text, example
        assert (ROOT / "examples" / example).exists()
        row = next(line for line in text.splitlines() if f"(../examples/{example})" in line)
        assert command in row, example
