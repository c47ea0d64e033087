"""The operator package's layout is its architecture: these import rules keep it so.

`api` and `plan` are the foundation (they import nothing of lanex above them); `controller` and
`local` are two backends that never import each other or the CLI; `ui` (the web dashboard) reads through
the CLI's and the local backend's functions, never the controller's; `cli` may import everything.
The check reads every module's imports with `ast`, including imports inside functions, so a lazy
import cannot slip past it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "operator" / "lanex_operator"

# For each part, the parts of lanex_operator it must never import.
FORBIDDEN = {
    "api": {"plan", "controller", "azure", "local", "cli"},
    "plan": {"controller", "azure", "local", "cli"},
    "controller": {"local", "cli"},
    "azure": {"controller", "local", "cli", "plan"},
    "local": {"controller", "azure", "cli"},
    "ui": {"controller", "azure"},  # the web dashboard: a view over the CLI's readers (cli, local), like the CLI
    "cli": set(),
}


def _part_of(module: Path) -> str:
    return module.relative_to(PACKAGE_ROOT).parts[0]


def _lanex_parts_imported(module: Path) -> set[tuple[str, int]]:
    """The lanex_operator parts a module imports, with the line of each import."""
    tree = ast.parse(module.read_text(), filename=str(module))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "lanex_operator":
                names = [f"lanex_operator.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "lanex_operator" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if len(p.relative_to(PACKAGE_ROOT).parts) > 1)


def test_every_module_lives_in_a_known_part() -> None:
    top_level = sorted(p.name for p in PACKAGE_ROOT.glob("*.py"))
    assert top_level == ["__init__.py"], f"modules outside the layered parts: {top_level}"
    assert {_part_of(m) for m in _modules()} <= set(FORBIDDEN)


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_module_imports_only_what_its_layer_allows(module: Path) -> None:
    part = _part_of(module)
    violations = [
        f"{module.relative_to(PACKAGE_ROOT)}:{line} imports lanex_operator.{imported}"
        for imported, line in _lanex_parts_imported(module)
        if imported in FORBIDDEN[part]
    ]
    assert not violations, f"`{part}` must not import {sorted(FORBIDDEN[part])}: {violations}"


def test_the_checker_sees_a_lazy_forbidden_import(tmp_path: Path) -> None:
    # The rule test is only as good as its parser: a function-level import must be caught too.
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from lanex_operator.controller import builders\n")
    assert ("controller", 2) in _lanex_parts_imported(sample)
