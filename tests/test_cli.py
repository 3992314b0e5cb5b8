"""The `throttlekit` command line, through its entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import throttlekit
from throttlekit import cli
from throttlekit.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m throttlekit ARGS` in a fresh interpreter, on this checkout's package."""
    env = dict(os.environ)
    pkg_parent = str(Path(throttlekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "throttlekit", *args], capture_output=True, text=True,
        timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


def test_version_via_python_m():
    """`python -m throttlekit --version` prints the package version."""
    p = _run("--version")
    assert p.returncode == 0
    build = "compiled core" if throttlekit.COMPILED else "pure Python"
    assert p.stdout.strip() == f"throttlekit {throttlekit.__version__} ({build})"


def test_no_command_prints_help_and_fails():
    """Without a command: usage on stderr, exit status 2."""
    p = _run()
    assert p.returncode == 2
    assert "simulate" in p.stderr and "usage: throttlekit" in p.stderr


def test_simulate_list_via_python_m():
    """`simulate --list` names every built-in scenario."""
    p = _run("simulate", "--list")
    assert p.returncode == 0
    for name in ("default", "single-source", "distributed", "brute-force", "scanner"):
        assert name in p.stdout


def test_simulate_json_via_python_m(tmp_path):
    """A scenario file run with --json in a subprocess prints parseable results."""
    f = tmp_path / "tiny.toml"
    f.write_text(
        'duration = 20\n[[clients]]\nclients = 5\nrate = 2\naddresses = "10.3.0.0/24"\n'
    )
    p = _run("simulate", str(f), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["legitimate"]["requests"] == pytest.approx(200, rel=0.1)
    assert data["legitimate"]["served_share"] == 1.0
    assert data["attack"]["requests"] == 0
    assert p.stderr == ""  # no progress bar when stderr is not a terminal


def test_bad_scenario_exits_2_with_a_message(capsys):
    """An unknown scenario is a usage error: exit 2, the reason on stderr."""
    assert main(["simulate", "no-such-scenario"]) == 2
    err = capsys.readouterr().err
    assert "throttlekit simulate: error: unknown scenario 'no-such-scenario'" in err


def test_bad_option_exits_2(capsys):
    """argparse errors exit with status 2."""
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--seed", "x"])
    assert exc.value.code == 2


def test_console_script_target_is_main():
    """pyproject's console script points at throttlekit.__main__:main, which takes argv."""
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["throttlekit"] == "throttlekit.__main__:main"
    assert main(["simulate", "--list"]) == 0


def test_subcommands_are_pluggable(monkeypatch, capsys):
    """A module listed in cli.COMMANDS with register(subparsers) becomes a subcommand."""
    plugin = types.ModuleType("tk_test_plugin")

    def register(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("name")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    plugin.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tk_test_plugin", plugin)
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "tk_test_plugin"])
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_unknown_storage_exits_2(capsys):
    """`simulate --storage` with an unsupported URL is a configuration error (exit 2)."""
    assert main(["simulate", "--storage", "nosuch://x", "--duration", "5"]) == 2
    assert "unknown storage URL 'nosuch://x'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["inspect", "192.0.2.1", "--storage", "memory://"],
                                     ["rules"], ["check"]])
def test_reader_closing_the_pipe_early_exits_quietly(tmp_path, command):
    """`throttlekit inspect KEY | head -1`: once the reader has gone, the command stops
    without a BrokenPipeError traceback and exits 141 (as a tool killed by SIGPIPE)."""
    rules = tmp_path / "rules.toml"
    # 1500 rules: inspect and rules print far more than a pipe buffer holds, so the command
    # is still writing when the reader goes; check prints a few lines, flushed at exit
    rules.write_text("".join(f'[[throttle]]\nname = "r{i}"\nrates = "{i + 1}/minute"\n'
                             f'match = "os.path:isabs"\n' for i in range(1500)))
    args = [*command, "--rules", str(rules)] if command[0] == "inspect" else [*command,
                                                                              str(rules)]
    env = dict(os.environ)
    pkg_parent = str(Path(throttlekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "throttlekit", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    if command[0] != "check":
        proc.stdout.read(1)  # the first bytes arrive, then the reader goes
    proc.stdout.close()  # the reader goes away, as `head` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
