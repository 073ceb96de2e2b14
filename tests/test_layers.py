"""Imports point down: every import inside the package goes to a lower layer of :data:`LAYERS`.

The layers are the package's real ones (DEVELOPERS.md, "Layout"): the CLI on top; the commands' own
packages; the pipelines; engines and result files; the run time; models and sequences; then the modules
everything may use. A lower layer that needs something from a higher one gets a protocol from below
(``runtime/progress.py`` for the CLI's progress bar). Packages of one layer do not import each other.
Every import counts, lazy and ``TYPE_CHECKING`` ones included: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "virnucpro_trt"
ROOT = "virnucpro_trt"  # the package's own __init__ (its __version__)

LAYERS: list[tuple[str, ...]] = [
    ("__main__",),  # python -m virnucpro_trt
    ("cli",),
    ("bench", "workflow"),
    ("demo",),
    ("pipeline",),
    ("engines", "outputs"),
    ("runtime",),
    ("models", "sequences"),
    ("files", "settings", "environment", "interrupts", "log_records"),
    ("errors",),
    (ROOT,),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The layer member a file belongs to: its top-level package or module under virnucpro_trt."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) == 1:
        return ROOT if parts[0] == "__init__.py" else parts[0].removesuffix(".py")
    return parts[0]


def _targets(node: ast.AST) -> list[tuple[str, int]]:
    """The layer members an import statement reaches, with its line."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, f"relative import on line {node.lineno}: the package uses absolute ones"
        module = node.module or ""
        if module == ROOT:  # from virnucpro_trt import x: x is a member, or a name of the root
            return [(alias.name if alias.name in RANK else ROOT, node.lineno) for alias in node.names]
        names = [module]
    return [
        (name.split(".")[1] if name.count(".") else ROOT, node.lineno)
        for name in names
        if name == ROOT or name.startswith(ROOT + ".")
    ]


def _upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        assert unit in RANK, f"{path.relative_to(PACKAGE)}: {unit!r} is in no layer of LAYERS; place it"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target, line in _targets(node):
                assert target in RANK, f"{path.relative_to(PACKAGE)}:{line} imports unknown {target!r}"
                if target != unit and RANK[target] <= RANK[unit]:
                    problems.append(f"{path.relative_to(PACKAGE)}:{line}: {unit} -> {target}")
    return problems


def test_every_import_points_down_the_layers() -> None:
    assert _upward_imports() == []


def test_the_check_sees_upward_lazy_and_type_only_imports(tmp_path: Path) -> None:
    """The walker itself: lazy, TYPE_CHECKING and ``from virnucpro_trt import`` forms are all found."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import virnucpro_trt.errors\n"
        "if TYPE_CHECKING:\n    from virnucpro_trt.cli.progress import ProgressReporter\n"
        "def f():\n    from virnucpro_trt import pipeline, __version__\n"
    )
    found = [target for node in ast.walk(ast.parse(source)) for target, _ in _targets(node)]
    assert sorted(found) == sorted(["errors", "cli", "pipeline", ROOT])
    assert _unit(PACKAGE / "runtime" / "worker.py") == "runtime"
    assert _unit(PACKAGE / "settings.py") == "settings" and _unit(PACKAGE / "__init__.py") == ROOT
