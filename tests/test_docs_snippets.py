"""Every code block of README.md and docs/*.md runs as written (issue 15, item 4).

How a page runs: its fenced ``python`` blocks, in order, in one namespace (a later block may
use what an earlier one defined, as a reader does), with the working directory a fresh
temporary directory holding a copy of ``examples/rules.toml`` as ``rules.toml`` (the file
the pages load), and ``THROTTLEKIT_STATUS_TOKEN``, ``THROTTLEKIT_TOKEN`` and
``THROTTLEKIT_CHALLENGE_KEY`` set (the pages read secrets from the environment, as they
tell operators to). Top-level ``await`` is allowed
(the block then runs in an event loop).

A block that truly cannot run here (it starts a server, or needs a machine we do not have)
is marked in the Markdown source, visibly, by an HTML comment on the line before it::

    <!-- docs-test: compile-only (starts uvicorn) -->

It is then compiled (so at least its syntax is checked) but not run; the reason is
required. ``console`` blocks marked ``<!-- docs-test: run -->`` run each ``$ throttlekit ...``
line through the CLI and check its exit status (``$ echo $?`` after it) and that every
line of output shown (``...`` elides) is printed. A block marked
``<!-- docs-test: file (NAME) -->`` (a rules file shown on the page) is written to ``NAME``
in the working directory, for the blocks after it. A python block of method signatures
(``limiter.throttle(name, rates, *, match=None, ...)``, not code) is marked
``<!-- docs-test: signatures -->``: each must match the method's real signature (names,
order, keyword-only marker and defaults), so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import logging
import re
import shlex
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*docs-test:\s*([\w-]+)\s*(?:\((.*?)\))?\s*-->\s*\Z", re.S)
TOKEN = "docs-snippet-token-0123456789abcdef"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    code: str
    mark: str | None
    reason: str | None

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, each with the docs-test marker on the line before."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        last = before.rsplit("\n", 1)[-1]
        mark = MARK.search(last)
        out.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2),
                         mark.group(1) if mark else None, mark.group(2) if mark else None))
    return out


@contextlib.contextmanager
def page_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    shutil.copy(ROOT / "examples" / "rules.toml", tmp_path / "rules.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THROTTLEKIT_STATUS_TOKEN", TOKEN)
    monkeypatch.setenv("THROTTLEKIT_TOKEN", TOKEN)
    monkeypatch.setenv("THROTTLEKIT_CHALLENGE_KEY", TOKEN)
    # a page may add handlers to throttlekit's loggers (structured logs): undone after it
    loggers = [logging.getLogger(n) for n in ("throttlekit", "throttlekit.monitor",
                                             "throttlekit.shield")]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        with warnings.catch_warnings():
            # a page may build a memory:// limiter under a test runner's env: not its point
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def run_python(block: Block, namespace: dict[str, object]) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(block.code, block.where, "exec", flags=flags, dont_inherit=True)
    if block.mark == "compile-only":
        return
    result = eval(code, namespace)  # the docs' own code
    if asyncio.iscoroutine(result):
        asyncio.run(result)


#: the objects signature blocks name, and the class whose methods they show
SIGNATURE_OWNERS = {"limiter": "throttlekit.Limiter"}
SIGNATURE = re.compile(r"^(\w+)\.(\w+)\((.*?)\)\s*(?:#.*)?$", re.S | re.M)


def check_signatures(block: Block) -> int:
    """Compare each ``obj.method(params)`` of the block with the method's signature;
    returns how many were checked."""
    import importlib
    import inspect

    checked = 0
    for m in SIGNATURE.finditer(block.code):
        module, _, cls = SIGNATURE_OWNERS[m.group(1)].rpartition(".")
        method = getattr(getattr(importlib.import_module(module), cls), m.group(2))
        shown = ast.parse(f"def f({m.group(3)}): pass").body[0].args  # type: ignore[attr-defined]
        real = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
        names = [a.arg for a in shown.args] + ["*"] + [a.arg for a in shown.kwonlyargs]
        want = [p.name for p in real if p.kind is not p.KEYWORD_ONLY] + ["*"] + [
            p.name for p in real if p.kind is p.KEYWORD_ONLY]
        assert names == want, f"{block.where}: {m.group(2)}{names} != {want}"
        defaults = dict(zip([a.arg for a in shown.args][-len(shown.defaults) or len(
            shown.args):], shown.defaults, strict=False))
        defaults.update({a.arg: d for a, d in zip(shown.kwonlyargs, shown.kw_defaults,
                                                  strict=True) if d is not None})
        for p in real:
            node = defaults.get(p.name)
            has = p.default is not p.empty
            assert (node is not None) == has, f"{block.where}: {m.group(2)}: {p.name} default"
            if node is not None:
                assert ast.literal_eval(node) == p.default, f"{block.where}: {p.name}"
        checked += 1
    return checked


def run_console(block: Block) -> None:
    """The ``$ throttlekit ...`` commands of a console block, through the CLI."""
    from throttlekit.cli import main

    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ throttlekit "):
            continue
        shown: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        want_status = 0
        if i < len(lines) and lines[i] == "$ echo $?":
            want_status = int(lines[i + 1])
            i += 2
        argv = shlex.split(line[2:].split("  #")[0])[1:]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
        printed = out.getvalue() + err.getvalue()
        assert status == want_status, f"{block.where}: {line!r} exited {status}\n{printed}"
        for expected in shown:
            for part in expected.split("..."):
                assert part.strip() in printed, (
                    f"{block.where}: {line!r} did not print {part.strip()!r}:\n{printed}")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_blocks_run(page: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every python block of the page runs in order, sharing one namespace, and every
    console block marked to run gives the status and output it shows."""
    import django_config  # noqa: F401  # the Django snippets define views and settings

    namespace: dict[str, object] = {"__name__": "docs_snippet", "__file__": str(page)}
    with page_env(tmp_path, monkeypatch):
        for block in blocks(page):
            if block.mark == "file" and block.reason:
                (tmp_path / block.reason).write_text(block.code, encoding="utf-8")
            elif block.mark == "signatures":
                assert check_signatures(block) > 0, block.where
            elif block.lang == "python":
                run_python(block, namespace)
            elif block.lang == "console" and block.mark == "run":
                run_console(block)


def test_every_marker_is_known_and_explained() -> None:
    """A block is excused from running only with a reason, and only a python block; a run
    marker is only on console blocks (so no marker is a silent no-op)."""
    found = 0
    for page in PAGES:
        for block in blocks(page):
            if block.mark is None:
                continue
            found += 1
            if block.mark == "compile-only":
                assert block.lang == "python" and block.reason, block.where
            elif block.mark == "file":
                assert block.reason and "/" not in block.reason, block.where
            elif block.mark == "signatures":
                assert block.lang == "python", block.where
            else:
                assert block.mark == "run" and block.lang == "console", block.where
        text = page.read_text(encoding="utf-8")
        marks = len(re.findall(r"<!--\s*docs-test:", text))
        assert marks == sum(b.mark is not None for b in blocks(page)), (
            f"{page.name}: a docs-test marker not right before a fence")
    assert found > 0


def test_every_python_block_is_run_or_excused() -> None:
    """Most python blocks run: compile-only stays the exception (servers, other hosts)."""
    py = [b for p in PAGES for b in blocks(p) if b.lang == "python"]
    excused = [b.where for b in py if b.mark == "compile-only"]
    assert len(py) >= 40
    assert len(excused) <= len(py) // 5, excused


def test_a_failing_block_names_its_page_and_line(tmp_path: Path) -> None:
    """The runner reports where a broken snippet is (file:line of the fence)."""
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n```python\nundefined_name\n```\n")
    ns: dict[str, object] = {}
    found = blocks(page)
    run_python(found[0], ns)
    with pytest.raises(NameError) as info:
        run_python(found[1], ns)
    assert info.traceback[-1].frame.code.raw.co_filename == f"{page}:7"


def test_compile_only_blocks_are_still_compiled(tmp_path: Path) -> None:
    """A compile-only block with a syntax error fails the page."""
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: compile-only (a server) -->\n```python\ndef f(:\n```\n")
    (block,) = blocks(page)
    assert block.mark == "compile-only" and block.reason == "a server"
    with pytest.raises(SyntaxError):
        run_python(block, {})


def test_a_console_block_that_disagrees_fails(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run block whose shown output or exit status is not what the CLI gives fails."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text('[[throttle]]\nname = "a"\nrates = "5/minute"\n')
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: run -->\n```console\n$ throttlekit check r.toml\n"
                    "r.toml: OK (1 rule)\n```\n\n<!-- docs-test: run -->\n```console\n"
                    "$ throttlekit check r.toml\nr.toml: OK (2 rules)\n```\n\n"
                    "<!-- docs-test: run -->\n```console\n$ throttlekit check r.toml\n"
                    "$ echo $?\n1\n```\n")
    good, wrong_output, wrong_status = blocks(page)
    run_console(good)
    with pytest.raises(AssertionError, match="did not print"):
        run_console(wrong_output)
    with pytest.raises(AssertionError, match="exited 0"):
        run_console(wrong_status)


def test_a_signature_that_drifted_fails(tmp_path: Path) -> None:
    """A signature block missing a parameter, or with a wrong default, fails."""
    page = tmp_path / "page.md"
    page.write_text("```python\nlimiter.track(name, match=None, *, key=None)\n```\n\n"
                    "```python\nlimiter.track(name, match=None)\n```\n\n"
                    "```python\nlimiter.track(name, match=1, *, key=None)\n```\n")
    right, missing, default = blocks(page)
    assert check_signatures(right) == 1
    with pytest.raises(AssertionError, match="track"):
        check_signatures(missing)
    with pytest.raises(AssertionError, match="match"):
        check_signatures(default)
