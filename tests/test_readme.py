"""The README stays true: its API table is the one the models generate, its commands exist."""

import re
import subprocess
import sys
from pathlib import Path

from lanex_operator.api.docs import fields_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LANEX = str(Path(sys.executable).parent / "lanex")


def test_api_table_is_generated_from_the_models():
    table = README.split("<!-- api-table:begin", 1)[1].split("-->", 1)[1].split("<!-- api-table:end -->", 1)[0]
    assert table.strip() == fields_table().strip()


def test_every_lanex_subcommand_in_the_readme_exists():
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.DOTALL))
    commands = set(re.findall(r"^lanex ([a-z][a-z-]*(?: (?:synth|download|prepare|list|restore))?)", code, re.MULTILINE))
    assert {"run", "submit", "train", "launch", "eval", "predict", "data synth"} <= commands
    for command in sorted(commands):
        done = subprocess.run([LANEX, *command.split(), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"lanex {command}: {done.stderr}"


def test_the_two_commands_are_the_makefile_targets_ci_runs():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "lanex run examples/quickstart.yaml" in makefile
