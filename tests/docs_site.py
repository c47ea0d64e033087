"""Helpers of the docs tests: the site's paths, building it, and its fenced shell blocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
DOCS_TOOLS = ROOT / "tools" / "docs"
SHELL_BLOCK = re.compile(r"^```(?:bash|console)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def environment() -> dict[str, str]:
    """This checkout's code first (a worktree's wins over an installed copy), the venv's programs on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer"),
                                         *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's end-of-life banner, not a build problem
    return env


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `config` into `site`."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300, env=environment())


def shell_blocks(page: Path) -> list[str]:
    """The ```bash and ```console blocks of a page, in order."""
    return SHELL_BLOCK.findall(page.read_text())
