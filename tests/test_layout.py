"""The packages' layout is their architecture: these import rules keep it so.

`api` and `plan` are the foundation (they import nothing of lanex above them); `controller`, `local`
and `client` (the Python API's Kubernetes client) are backends that never import each other's
machinery or the CLI. The public package `lanex` (the Python API) sits on top of them and never
imports the CLI; the CLI goes through `lanex` for everything it does (never straight to `local` or
`client`), and its command modules never import one another. `ui` (the web dashboard) is a view over
the same readers as the CLI, never the controller's. The check reads every module's
imports with `ast`, including imports inside functions, so a lazy import cannot slip past it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "operator" / "lanex_operator"
PUBLIC_ROOT = REPO / "operator" / "lanex"

# For each part, the parts of lanex_operator it must never import.
FORBIDDEN = {
    "api": {"plan", "controller", "azure", "local", "client", "cli"},
    "plan": {"controller", "azure", "local", "client", "cli"},
    "controller": {"local", "client", "cli"},
    "azure": {"controller", "local", "client", "cli", "plan"},
    "local": {"controller", "azure", "client", "cli"},
    "client": {"local", "azure", "cli"},
    "ui": {"controller", "azure"},  # the web dashboard: a view over the CLI's readers, like the CLI
    "cli": {"local", "client"},  # what the commands do goes through `lanex`
}
# The parts of lanex_operator that may import the public package `lanex` (it is built on the others).
USES_PUBLIC_API = {"cli", "ui"}


def _part_of(module: Path) -> str:
    return module.relative_to(PACKAGE_ROOT).parts[0]


def _imported(module: Path) -> set[tuple[str, int]]:
    """Every module name a module imports (`from a.b import c` counts as a.b and a.b.c), with its line."""
    tree = ast.parse(module.read_text(), filename=str(module))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module, node.lineno))
            found |= {(f"{node.module}.{alias.name}", node.lineno) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
    return found


def _lanex_parts_imported(module: Path) -> set[tuple[str, int]]:
    """The lanex_operator parts a module imports, with the line of each import."""
    return {(name.split(".")[1], line) for name, line in _imported(module)
            if name.startswith("lanex_operator.")}


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


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_only_the_cli_builds_on_the_public_api(module: Path) -> None:
    if _part_of(module) in USES_PUBLIC_API:
        return
    uses = [f"{line}: {name}" for name, line in _imported(module) if name == "lanex" or name.startswith("lanex.")]
    assert not uses, f"{module.relative_to(PACKAGE_ROOT)} imports the public `lanex` package, which is built on it: {uses}"


def _public_modules() -> list[Path]:
    return sorted(PUBLIC_ROOT.rglob("*.py"))


@pytest.mark.parametrize("module", _public_modules(), ids=lambda p: str(p.relative_to(PUBLIC_ROOT)))
def test_the_public_api_never_imports_the_cli_or_the_operator_framework(module: Path) -> None:
    wrong = [f"{line}: {name}" for name, line in _imported(module)
             if name.split(".")[:2] == ["lanex_operator", "cli"] or name.split(".")[0] in ("kopf", "torch", "typer")]
    assert not wrong, f"lanex/{module.relative_to(PUBLIC_ROOT)}: the API is below the CLI and needs no kopf, torch " \
                      f"or typer: {wrong}"


def test_import_lanex_loads_neither_torch_nor_kopf_nor_the_kubernetes_client() -> None:
    probe = ("import sys, lanex; print(' '.join(m for m in ('torch', 'kopf', 'kubernetes', 'typer', 'matplotlib') "
             "if m in sys.modules))")
    env_path = f"{REPO / 'operator'}:{REPO / 'trainer'}"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"`import lanex` loaded {done.stdout.split()}"


def _defines_commands(module: Path) -> bool:
    """Whether a CLI module defines commands: a parameter defaulting to typer.Option/Argument, or a Typer app."""
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "typer" and \
                node.func.attr in ("Option", "Argument", "Typer"):
            return True
    return False


CLI_ROOT = PACKAGE_ROOT / "cli"
ENTRY_POINT = CLI_ROOT / "main.py"  # registers every command module
COMMAND_MODULES = sorted(m for m in CLI_ROOT.rglob("*.py") if m != ENTRY_POINT and _defines_commands(m))


def test_the_command_modules_are_found() -> None:
    assert {"local_commands.py", "cluster_commands.py", "snapshot_commands.py", "compare.py"} <= \
        {m.name for m in COMMAND_MODULES}


@pytest.mark.parametrize("module", COMMAND_MODULES, ids=lambda p: p.name)
def test_command_modules_never_import_each_other(module: Path) -> None:
    others = {"lanex_operator.cli." + str(m.relative_to(CLI_ROOT).with_suffix("")).replace("/", ".")
              for m in COMMAND_MODULES if m != module}
    wrong = sorted(f"{line}: {name}" for name, line in _imported(module) if name in others)
    assert not wrong, f"{module.name} imports another command module (share through plumbing or a views module): {wrong}"


def test_the_checker_sees_a_lazy_forbidden_import(tmp_path: Path) -> None:
    # The rule test is only as good as its parser: a function-level import must be caught too.
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from lanex_operator.controller import builders\n")
    assert ("controller", 2) in _lanex_parts_imported(sample)
