"""The documentation site builds with --strict, and its generated Reference pages hold everything the
code defines: every API field, every command, every metric, every reason, every Helm value."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from docs_site import CONFIG, DOCS, DOCS_TOOLS, ROOT, build, shell_blocks
from lanex_operator.api.docs import field_rows
from lanex_operator.api.reasons import CONDITIONS, REASONS
from lanex_operator.api.sweep_crd import sweep_table_schema

if str(DOCS_TOOLS) not in sys.path:
    sys.path.insert(0, str(DOCS_TOOLS))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(CONFIG, out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def text_of(site: Path, page: str) -> str:
    """The visible text of a built page (tags dropped, entities decoded), as `words` gives it."""
    raw = (site / page / "index.html").read_text()
    return words(html.unescape(re.sub(r"<[^>]+>", "", raw)))


def words(text: str) -> str:
    """`text` without Markdown's code marks, its white space as single spaces."""
    return " ".join(text.replace("`", "").split())


def test_every_page_of_the_docs_folder_is_in_the_nav_and_built(site: Path) -> None:
    for source in DOCS.rglob("*.md"):
        page = source.relative_to(DOCS).with_suffix("")
        built = site / ("" if page.name == "index" else page) / "index.html"
        assert built.is_file(), f"{source} was not built"


def test_the_api_pages_hold_every_field_of_both_resources(site: Path) -> None:
    experiment = text_of(site, "reference/laneexperiment")
    sweep = text_of(site, "reference/lanesweep")
    for page, schema in ((experiment, None), (sweep, sweep_table_schema())):
        rows = field_rows(schema)
        assert len(rows) > 20
        for path, kind, _required, default, description in rows:
            assert path.strip("`") in page
            assert words(description)[:60] in page


def test_the_cli_page_holds_every_command_and_option(site: Path) -> None:
    import ref_cli

    page = text_of(site, "reference/cli")
    commands = list(ref_cli.commands())
    assert {"lanex run", "lanex submit", "lanex data synth", "lanex snapshots restore", "lanex operator"} <= {
        path for path, _command, _ctx in commands}
    for path, command, ctx in commands:
        assert path in page
        for param in command.get_params(ctx):
            if param.name == "help":  # every command has it; the page leaves it out
                continue
            for option in param.opts:
                assert option in page, f"{path} {option}"


def test_the_metrics_page_holds_every_metric_the_operator_serves(site: Path) -> None:
    from prometheus_client import generate_latest

    from lanex_operator.controller.metrics import OperatorMetrics

    served = set(re.findall(r"^# TYPE (\S+) ", generate_latest(OperatorMetrics().registry).decode(), re.MULTILINE))
    page = text_of(site, "reference/metrics")
    assert {"lanex_experiments", "lanex_training_progress_ratio", "lanex_storage_pool_changes_total"} <= served
    for name in served - {name for name in served if name.endswith("_created")}:  # the client's own, see the page
        assert name in page
    assert "_created" in page


def test_the_conditions_page_holds_every_condition_and_reason_with_what_to_do(site: Path) -> None:
    page = text_of(site, "reference/conditions")
    for condition in CONDITIONS:
        assert (site / "reference/conditions/index.html").read_text().count(f'id="{condition.type.lower()}"') == 1
    for reason in REASONS:
        assert reason.reason in page
        assert words(reason.meaning)[:50] in page
        if reason.action:
            assert words(reason.action)[:50] in page


def test_the_helm_page_holds_every_value_of_the_schema(site: Path) -> None:
    page = text_of(site, "reference/helm-values")

    def keys(node: dict, path: str = ""):
        for name, child in node.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            if "properties" not in child or child.get("description"):
                yield key
            yield from keys(child, key)

    schema = json.loads((ROOT / "charts" / "lanex-operator" / "values.schema.json").read_text())
    found = list(keys(schema))
    assert "storage.tierPools.Premium" in found and "credentials.optInLabel" in found
    for key in found:
        assert key in page
    defaults = yaml.safe_load((ROOT / "charts" / "lanex-operator" / "values.yaml").read_text())
    assert json.dumps(defaults["defaults"]["trainerImage"]) in page


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    # The site's validation settings are what make a broken link an error: prove it on a copy.
    docs = tmp_path / "docs"
    for source in DOCS.rglob("*"):
        if source.is_file():
            target = docs / source.relative_to(DOCS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    page = docs / "concepts" / "experiment.md"
    page.write_text(page.read_text() + "\nSee [nowhere](sweeps.md#no-such-heading).\n")
    config = yaml.safe_load(CONFIG.read_text())
    config.update(docs_dir=str(docs), hooks=[str(DOCS_TOOLS / "hooks.py")])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-heading" in done.stderr


def test_every_lanex_command_in_the_docs_exists() -> None:
    import ref_cli

    known = {path for path, _command, _ctx in ref_cli.commands()}
    used = set()
    for page in DOCS.rglob("*.md"):
        for block in shell_blocks(page):
            for line in block.splitlines():
                match = re.match(r"^\s*lanex((?: [a-z][a-z-]*)+)", line)
                if match:
                    words = match.group(1).split()
                    path = "lanex"
                    for word in words:  # the longest command path the line names
                        if f"{path} {word}" not in known:
                            break
                        path = f"{path} {word}"
                    used.add(path)
    assert {"lanex run", "lanex submit", "lanex get", "lanex snapshots restore", "lanex render"} <= used
    assert "lanex" not in used, "a line starts with `lanex` and an unknown command"
