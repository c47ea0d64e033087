"""The README stays a landing page that tells the truth: short, its two commands are the Makefile
targets CI runs, its picture and links exist, and every `lanex` command it shows exists.

The API table, the guide and the reference that the README used to hold moved to the docs site:
tests/test_docs_site.py holds the generated reference pages to the code."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LANEX = str(Path(sys.executable).parent / "lanex")


def test_the_readme_is_a_landing_page_of_at_most_150_lines():
    assert len(README.splitlines()) <= 150
    assert README.startswith("# lanex\n")


def test_the_readme_picture_and_links_point_at_files_that_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert any(target.endswith(".svg") or target.endswith(".png") for target in targets)
    assert "docs/getting-started/laptop.md" in targets and "docs/performance.md" in targets
    for target in targets:
        assert (ROOT / target).is_file(), f"README links to a missing file: {target}"


def test_every_lanex_subcommand_in_the_readme_exists():
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.DOTALL))
    commands = set(re.findall(r"^lanex ([a-z][a-z-]*(?: (?:synth|download|prepare|list|restore))?)", code, re.MULTILINE))
    for command in sorted(commands):
        done = subprocess.run([LANEX, *command.split(), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"lanex {command}: {done.stderr}"


def test_the_two_commands_are_the_makefile_targets_ci_runs():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "lanex run examples/quickstart.yaml" in makefile


def test_the_readme_figures_are_the_performance_pages():
    # The landing page quotes the measured figures; the Performance page holds them with their commands.
    performance = (ROOT / "docs" / "performance.md").read_text()
    for figure in ("3 min 36 s", "92.43 %", "28.9x", "120 images/s", "1,155 tests in 26 min 40 s"):
        assert figure in README and figure in performance, figure
