"""The architecture ratchet: import cycles, outward imports, private reads, long code.

Each measure must stay at or below its number in ``tests/architecture_budget.toml``. When a
change raises one, the test fails and says where; when a change lowers one, the test passes
and warns (see the warnings summary) that the budget should come down to the new number in
the same commit, so the gain is kept. Read from the source with ``ast`` (nothing imported):

- imports: the module graph of ``src/throttlekit``, imports inside functions counted (they only
  hide a cycle), those under ``if TYPE_CHECKING:`` not (they never run); the same rules as
  ``shared/tools/imports.py``. ``cycle_members`` counts the modules in import cycles;
  ``outward_imports`` the imports of a web framework or of ``throttlekit.contrib`` by a module
  outside ``contrib/`` (``testing`` and ``pytest_plugin`` excepted, as in the tool).
- ``private_reads``: ``x._name`` where ``x`` is not ``self``, ``cls`` or ``super()`` (writes
  count too: state another object owns), NamedTuple's public ``_replace``/``_fields``/
  ``_asdict``/``_make`` excepted.
- ``max_module_lines`` / ``max_function_lines``: today's offenders are listed by name under
  ``[long_modules]`` / ``[long_functions]`` with their current length, which they may not
  exceed; a listed one that comes under the limit is to be removed from the list.

Not measured here: repeated blocks (the ``duplicates`` tool is not in CI).
"""

from __future__ import annotations

import ast
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PKG = "throttlekit"
BUDGET_FILE = Path(__file__).with_name("architecture_budget.toml")
FRAMEWORKS = ("flask", "django", "starlette", "fastapi")
NAMEDTUPLE_API = frozenset({"_replace", "_fields", "_asdict", "_make"})
OWN = frozenset({"self", "cls"})

# A lowered number is good news, not a failure: shown in the warnings summary.
ratchet = pytest.mark.filterwarnings("default::UserWarning")


class BudgetCanShrink(UserWarning):
    """A measure went below its budget: lower the budget in the same commit."""


@cache
def budget() -> dict[str, Any]:
    with BUDGET_FILE.open("rb") as f:
        return tomllib.load(f)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        found[module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return found


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (those imports never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def imports_of(name: str, path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                depth = len(name.split(".")) - node.level + (1 if is_pkg else 0)
                base = ".".join(name.split(".")[:depth] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            # `from pkg import submodule` depends on the submodule, not on pkg's __init__
            found.update(subs & modules if subs & modules else {base} | subs)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = set(sources())
    graph: dict[str, set[str]] = {}
    outward: list[str] = []
    for name, (path, tree) in sources().items():
        deps = imports_of(name, path, tree, modules)
        graph[name] = {d for d in deps if d in modules and d != name}
        if ".contrib" not in name and not name.endswith((".testing", ".pytest_plugin")):
            outward += [f"{name} imports {d}" for d in sorted(deps)
                        if d.startswith(f"{PKG}.contrib") or d.split(".")[0] in FRAMEWORKS]
    return graph, outward


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def private_reads_in(module: str, tree: ast.AST) -> list[str]:
    """``module:line: expr`` for each access to another object's ``_private`` attribute."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in NAMEDTUPLE_API:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in OWN:
            continue
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id == "super"):
            continue
        found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return found


def private_reads() -> list[str]:
    return [r for name, (_p, tree) in sources().items() for r in private_reads_in(name, tree)]


def module_lengths() -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, (path, _t) in sources().items()}


def function_lengths() -> dict[str, int]:
    """``module:Qual.name`` -> lines from ``def`` to the last line of the body."""
    lengths: dict[str, int] = {}

    def walk(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    key = f"{module}:{qual}"
                    lengths[key] = max(lengths.get(key, 0), child.end_lineno - child.lineno + 1)
                walk(child, module, qual + ".")
            else:
                walk(child, module, prefix)

    for name, (_path, tree) in sources().items():
        walk(tree, name, "")
    return lengths


def _check(measure: str, value: int, detail: str = "") -> None:
    allowed = budget()["budget"][measure]
    assert value <= allowed, (
        f"{measure} went up: {value} > budget {allowed} in {BUDGET_FILE.name}. "
        f"The budget only comes down; move the code instead.\n{detail}"
    )
    if value < allowed:
        warnings.warn(BudgetCanShrink(
            f"{measure} is {value}, below its budget {allowed}: lower `{measure} = {value}` in "
            f"tests/{BUDGET_FILE.name} in this commit so the gain is kept"
        ), stacklevel=2)


@ratchet
def test_import_cycles_do_not_grow() -> None:
    members = sorted(m for comp in cycles(import_graph()[0]) for m in comp)
    _check("cycle_members", len(members), "modules in cycles: " + ", ".join(members))


@ratchet
def test_outward_imports_do_not_grow() -> None:
    outward = import_graph()[1]
    _check("outward_imports", len(outward), "\n".join(outward))


@ratchet
def test_private_reads_do_not_grow() -> None:
    reads = private_reads()
    per_module = Counter(r.split(":", 1)[0] for r in reads)
    detail = ", ".join(f"{m} {n}" for m, n in per_module.most_common()) + "\n" + "\n".join(reads)
    _check("private_reads", len(reads), detail)


def _check_lengths(kind: str, lengths: dict[str, int], limit: int) -> None:
    allowed: dict[str, int] = budget()[kind]
    too_long = {n: v for n, v in lengths.items() if v > limit and v > allowed.get(n, 0)}
    listed = ", ".join(f"{n} {v} (allowed {allowed.get(n, limit)})"
                       for n, v in sorted(too_long.items()))
    assert not too_long, (
        f"over {limit} lines (split them; a listed exception may not grow past its number "
        f"in {BUDGET_FILE.name}): {listed}"
    )
    for name, cap in sorted(allowed.items()):
        now = lengths.get(name, 0)
        if now <= limit:
            warnings.warn(BudgetCanShrink(
                f"{name} is {now} lines now (limit {limit}): delete it from [{kind}] in "
                f"tests/{BUDGET_FILE.name}"), stacklevel=2)
        elif now < cap:
            warnings.warn(BudgetCanShrink(
                f"{name} is {now} lines, below its allowance {cap}: lower it in [{kind}] in "
                f"tests/{BUDGET_FILE.name}"), stacklevel=2)


@ratchet
def test_modules_are_short() -> None:
    _check_lengths("long_modules", module_lengths(), budget()["budget"]["max_module_lines"])


@ratchet
def test_functions_are_short() -> None:
    _check_lengths("long_functions", function_lengths(),
                   budget()["budget"]["max_function_lines"])


def test_the_measures_see_what_they_guard() -> None:
    """The checks are not vacuous: each finds a planted offence in a scratch module."""
    planted = ast.parse(
        "import flask\n"
        "def f(limiter):\n"
        "    from throttlekit import contrib\n"
        "    limiter._rules.fast = self._ok + cls._ok + super()._ok + d._replace().x\n"
    )
    assert private_reads_in("x", planted) == ["x:4: limiter._rules"]
    deps = imports_of("throttlekit.x", Path("x.py"), planted, {"throttlekit.contrib"})
    assert {"flask", "throttlekit.contrib"} <= deps
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
