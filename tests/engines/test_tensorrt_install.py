"""``pip install '.[tensorrt]'`` installs every module the TensorRT path imports.

The modules are derived from the source, not listed by hand: every ``import`` (module level or inside a
function) of ``virnucpro_trt/engines/tensorrt_*.py`` and, transitively, of every ``virnucpro_trt`` module
they import (the ONNX export among them), found by walking the syntax trees. Third-party names must be
provided by the package's own dependencies or the ``tensorrt`` extra, read from ``pyproject.toml``; the
only exceptions are the ones ``tensorrt_backend.OPTIONAL_IMPORTS`` names with their reason.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

from virnucpro_trt.engines.tensorrt_backend import OPTIONAL_IMPORTS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "virnucpro_trt"


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name an ``import`` anywhere in ``path`` may load (``from a import b``: a and a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def tensorrt_path_imports() -> tuple[set[str], dict[str, set[str]]]:
    """(our modules reached, {third-party top-level module: the modules of ours importing it})."""
    roots = [f"{PACKAGE}.engines.{p.stem}" for p in (ROOT / PACKAGE / "engines").glob("tensorrt_*.py")]
    seen: set[str] = set()
    third_party: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        assert path is not None, module
        for name in _imported_names(path, module):
            top = name.split(".")[0]
            if top == PACKAGE:
                if _module_file(name) is not None:
                    todo.append(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, set()).add(module)
    return seen, third_party


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def modules_provided(requirements: list[str]) -> set[str]:
    """Top-level modules the named distributions provide: read from the installed metadata where the
    distribution is installed here, else its name with dashes as underscores (``onnx-ir`` -> ``onnx_ir``)."""
    by_distribution: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            by_distribution.setdefault(_normalized(distribution), set()).add(module)
    provided: set[str] = set()
    for requirement in requirements:
        name = _normalized(Requirement(requirement).name)
        provided |= by_distribution.get(name, {name.replace("-", "_")})
    return provided


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def uncovered(third_party: dict[str, set[str]], requirements: list[str]) -> dict[str, set[str]]:
    provided = modules_provided(requirements)
    return {m: users for m, users in third_party.items() if m not in provided and m not in OPTIONAL_IMPORTS}


def test_the_walk_reaches_the_onnx_export_and_tensorrt() -> None:
    ours, third_party = tensorrt_path_imports()
    assert {f"{PACKAGE}.engines.tensorrt_backend", f"{PACKAGE}.engines.onnx_export"} <= ours
    assert {"tensorrt", "onnx", "onnxscript", "onnx_ir", "torch", "numpy"} <= set(third_party)
    assert f"{PACKAGE}.engines.onnx_export" in third_party["onnxscript"]


def test_the_tensorrt_extra_covers_every_module_the_path_imports() -> None:
    project = _project()
    requirements = project["dependencies"] + project["optional-dependencies"]["tensorrt"]
    _, third_party = tensorrt_path_imports()
    missing = uncovered(third_party, requirements)
    assert not missing, f"imported by the TensorRT path but not installed by [tensorrt]: {missing}"


def test_the_check_notices_a_module_the_extra_leaves_out() -> None:
    """The state of issue 15: ``tensorrt>=10.0`` and onnx only."""
    _, third_party = tensorrt_path_imports()
    missing = uncovered(third_party, [*_project()["dependencies"], "tensorrt>=10.0", "onnx>=1.16"])
    assert set(missing) == {"onnxscript", "onnx_ir"}


def test_optional_imports_are_real_and_left_out_on_purpose() -> None:
    _, third_party = tensorrt_path_imports()
    project = _project()
    provided = modules_provided(project["dependencies"] + project["optional-dependencies"]["tensorrt"])
    for module, reason in OPTIONAL_IMPORTS.items():
        assert module in third_party, f"{module} is no longer imported: drop it from OPTIONAL_IMPORTS"
        assert module not in provided and reason


def test_the_extra_installs_the_tensorrt_10_line() -> None:
    extra = [Requirement(r) for r in _project()["optional-dependencies"]["tensorrt"]]
    (specifier,) = [r.specifier for r in extra if r.name == "tensorrt"]
    assert all(v in specifier for v in ("10.0.1", "10.16.1.11"))
    assert not any(v in specifier for v in ("8.6.1", "11.0.0.114", "11.4.0.106"))
