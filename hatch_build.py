"""The optional compiled core: ``THROTTLEKIT_COMPILE=1 pip install .``.

A hatchling build hook. By default it does nothing and the wheel is pure Python
(``py3-none-any``, no compiler needed). With ``THROTTLEKIT_COMPILE=1`` in the environment,
the modules of :data:`COMPILED_MODULES` (the algorithms and the memory store's hit, what
``Limiter.hit`` goes through) are compiled with mypyc into extension modules, installed
beside their sources in a wheel for this interpreter and platform: Python imports the
extension module before the ``.py`` source of the same name. The sources stay what they are,
the one copy of the code (the pure-Python build runs them as they are); ``throttlekit.COMPILED``
says which build is running.

The compiler's work happens in a temporary directory: nothing is written to ``src/`` (an
extension module there would shadow the sources of an editable install). An editable
install (``pip install -e .``) is always pure Python: the variable is refused there.
Needs a C compiler and the Python headers; mypy and setuptools are fetched as build
dependencies only when compiling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: the variable that asks for the compiled build ("1", "true" or "yes")
ENV = "THROTTLEKIT_COMPILE"
#: compiled together (one group: the memory store's hit calls the algorithms natively);
#: chosen by measuring (docs/benchmarks.md): ``Limiter`` itself stays Python, since a
#: compiled signature would turn a bad argument's ConfigError into mypyc's TypeError
COMPILED_MODULES = ("throttlekit/_algorithms.py", "throttlekit/storage/_memory_hit.py")
#: the build dependencies of a compiled build
COMPILE_REQUIRES = ["mypy>=1.10", "setuptools>=69"]

SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

paths, target = sys.argv.pop(1), sys.argv.pop(1)
setup(
    name="throttlekit-compiled-core",
    ext_modules=mypycify(
        ["--ignore-missing-imports", *paths.split(",")],
        opt_level="3", group_name="throttlekit._core", target_dir=target,
    ),
)
"""


def compile_requested() -> bool:
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes"}


class CompiledCoreHook(BuildHookInterface):  # type: ignore[type-arg]  # (Generic)
    """Compiles :data:`COMPILED_MODULES` with mypyc when ``THROTTLEKIT_COMPILE=1``."""

    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return list(COMPILE_REQUIRES) if compile_requested() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or not compile_requested():
            return
        if version == "editable":
            raise RuntimeError(
                f"{ENV}=1 builds a regular wheel: install with `pip install .` (an editable "
                "install runs the sources in place, pure Python)"
            )
        src = Path(self.root) / "src"
        work = Path(tempfile.mkdtemp(prefix="throttlekit-mypyc-"))
        try:
            built = self._compile(src, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self._work = work
        for path in built:
            build_data["force_include"][str(path)] = path.relative_to(work / "lib").as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    def _compile(self, src: Path, work: Path) -> list[Path]:
        """Run mypyc and the C compiler in ``work`` (a copy of the package: mypy reads the
        package structure, and nothing lands in ``src/``); the extension modules built."""
        shutil.copytree(src / "throttlekit", work / "src" / "throttlekit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        (work / "setup.py").write_text(SETUP)
        paths = ",".join(str(work / "src" / m) for m in COMPILED_MODULES)
        cmd = [sys.executable, "setup.py", paths, str(work / "c"), "build_ext",
               "--build-lib", str(work / "lib"), "--build-temp", str(work / "tmp")]
        self.app.display_info(f"{ENV}: compiling {', '.join(COMPILED_MODULES)} with mypyc")
        done = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{ENV}=1: mypyc failed (exit {done.returncode}):\n"
                               f"{done.stdout[-6000:]}")
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        built = sorted((work / "lib").rglob(f"*{suffix}"))
        expected = {Path(m).with_suffix("").as_posix() for m in COMPILED_MODULES}
        got = {p.relative_to(work / "lib").as_posix()[: -len(suffix)] for p in built}
        if not expected <= got:
            raise RuntimeError(f"{ENV}=1: mypyc built {sorted(got)}, expected {sorted(expected)}")
        return built
