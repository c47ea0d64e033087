"""`lanex ui` in a real headless Chromium (Debian's, driven by Playwright), on real local runs.

A module workspace holds two tiny finished experiments (one with a hostile string in a spec value
and in its log), and a finished two-trial sweep. The pages are checked as a person would see them:
rows that match `lanex get --workspace -o json`, charts with pixels drawn, images decoded, hostile
strings shown as text (no dialog, no injected element); a run started while the home page is open
shows new numbers and turns Succeeded without a reload, and disappears when deleted through the
actions of an `--allow-actions` server. The screenshots of docs/img/ui-*.png are taken here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ui_server import lanex_ui

LANEX = str(Path(sys.executable).parent / "lanex")
CHROMIUM = shutil.which("chromium")
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
HOSTILE_LOG = "<img src=x onerror=alert(3)> </pre><script>alert(4)</script>"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing: run `make system`")]

TRAINING = {"backend": "torch", "backbone": "small", "workers": 1, "gpusPerWorker": 0, "batchSize": 2,
            "loaderWorkers": 0, "useWorkers": False, "validation": {"enabled": True, "batchSize": 4}, "epochs": 2,
            "height": 32, "width": 64, "largeShm": False}


def experiment(name: str, clips: int = 4, **training: Any) -> dict[str, Any]:
    return {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": name},
            "spec": {"dataset": {"synthetic": {"clips": clips, "seed": 1}, "size": "1Gi"},
                     "training": {**TRAINING, **training}, "snapshot": {"enabled": True}}}


SWEEP = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep", "metadata": {"name": "sweepy"},
         "spec": {"template": {"dataset": {"synthetic": {"clips": 4, "seed": 1}, "size": "1Gi"}, "training": TRAINING},
                  "parameters": [{"path": "learningRate", "values": [0.01, 0.05]}], "retention": {"keepBest": 2}}}


def run(document: dict[str, Any], folder: Path, workspace: Path, *args: str) -> None:
    file = folder / f"{document['metadata']['name']}.yaml"
    file.write_text(yaml.safe_dump(document))
    done = subprocess.run([LANEX, "run", str(file), "--workspace", str(workspace), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui")
    workspace = folder / "ws"
    run(experiment("alpha", env=[{"name": "HOSTILE", "value": HOSTILE}]), folder, workspace)
    run(experiment("beta", learningRate=0.01), folder, workspace)
    run(SWEEP, folder, workspace, "--parallel", "2")
    with (workspace / "experiments" / "alpha" / "logs" / "train.log").open("a") as log:
        log.write(HOSTILE_LOG + "\n")
    return workspace


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[str]:
    with lanex_ui("--workspace", str(workspace)) as (url, _):
        yield url.rstrip("/")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's browser, not a download; no sandbox: the tests run as root.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Watched:
    """A page with every dialog and script error it raised recorded (a dialog means a string ran as code)."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1360, "height": 900})
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def inert(self) -> None:
        """Nothing hostile ran or was parsed into the page."""
        assert self.dialogs == [] and self.errors == []
        assert self.page.locator('img[src="x"]').count() == 0
        scripts = self.page.eval_on_selector_all("script[src]", "nodes => nodes.map(n => n.getAttribute('src'))")
        assert all(src.startswith("/static/") for src in scripts)
        assert self.page.locator("script:not([src]):not([type='application/json'])").count() == 0


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    page = Watched(browser)
    yield page
    page.page.close()


def drawn_pixels(page: Any, selector: str) -> int:
    """Non-transparent pixels of the chart canvas under `selector` (0: nothing drawn)."""
    return page.eval_on_selector(f"{selector} canvas", """canvas => {
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++; return n; }""")


def cli_records(workspace: Path) -> dict[str, Any]:
    done = subprocess.run([LANEX, "get", "--workspace", str(workspace), "-o", "json"], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def cell(page: Any, table: str, name: str, key: str) -> str:
    return page.locator(f'#{table} tr[data-name="{name}"] td[data-key="{key}"]').inner_text().strip()


def test_home_shows_the_records_that_lanex_get_prints(workspace: Path, server: str, watched: Watched) -> None:
    from lanex_operator.cli.views import decimal

    records = cli_records(workspace)
    watched.page.goto(server + "/")
    watched.page.wait_for_selector("#live.on")
    rows = watched.page.locator("#experiments tbody tr")
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.name)")) == sorted(
        e["name"] for e in records["experiments"])
    for record in records["experiments"]:
        assert cell(watched.page, "experiments", record["name"], "phase") == record["phase"] == "Succeeded"
        assert cell(watched.page, "experiments", record["name"], "accuracy") == decimal(record["results"]["accuracy"])
        assert cell(watched.page, "experiments", record["name"], "fn") == decimal(record["results"]["fn"])
        assert cell(watched.page, "experiments", record["name"], "snapshot") == record["snapshot"]
    (sweep,) = records["sweeps"]
    assert cell(watched.page, "sweeps", "sweepy", "best") == sweep["bestTrial"]["name"]
    # the filter and the trial switch hide rows on the page itself
    watched.page.fill("#filter", "alp")
    assert watched.page.locator("#experiments tbody tr:not([hidden])").count() == 1
    watched.page.fill("#filter", "")
    watched.page.check("#hide-trials")
    assert watched.page.locator("#experiments tbody tr:not([hidden])").count() == 2
    watched.page.uncheck("#hide-trials")
    watched.page.click('#experiments th[data-key="name"]')
    watched.page.click('#experiments th[data-key="name"]')  # descending
    names = rows.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == sorted(names, reverse=True)
    watched.inert()
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    watched.page.click('#experiments th[data-key="name"]')
    watched.page.screenshot(path=str(DOCS_IMG / "ui-home.png"), full_page=True)


def test_experiment_page_draws_curves_and_pictures_and_shows_hostile_strings_as_text(
        workspace: Path, server: str, watched: Watched) -> None:
    page = watched.page
    page.goto(server + "/experiments/alpha")
    page.wait_for_selector("#live.on")
    for chart in ("#chart-loss", "#chart-lr", "#chart-val"):
        assert drawn_pixels(page, chart) > 200, chart
    assert page.eval_on_selector("#chart-loss", "n => n.querySelector('canvas') !== null")
    images = page.locator("#images img")
    assert images.count() >= 3  # curves, worst sheet, at least one overlay
    page.wait_for_function("() => Array.from(document.querySelectorAll('#images img')).every(i => i.complete)")
    widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert all(width > 0 for width in widths), widths  # every picture decoded
    # the hostile spec value and log line are on the page, as text
    assert HOSTILE in page.locator("dl.pairs").last.inner_text()
    assert HOSTILE_LOG in page.locator("#log").inner_text()
    # a hostile line written while the page is open arrives by the live log, as text too
    later = "later: <svg onload=alert(5)> done"
    with (workspace / "experiments" / "alpha" / "logs" / "train.log").open("a") as log:
        log.write(later + "\n")
    page.wait_for_function("text => document.getElementById('log').textContent.includes(text)", arg=later, timeout=15000)
    assert page.locator("#log svg").count() == 0
    # the restore commands name the experiment's snapshot
    snapshot = cli_records(workspace)["experiments"][0]["snapshot"]
    assert f"lanex snapshots restore {snapshot}" in page.locator(".commands").first.inner_text()
    watched.inert()
    page.screenshot(path=str(DOCS_IMG / "ui-experiment.png"), full_page=True)


def test_sweep_page_has_the_leaderboard_parallel_coordinates_and_every_trials_curve(
        workspace: Path, server: str, watched: Watched) -> None:
    page = watched.page
    best = cli_records(workspace)["sweeps"][0]["bestTrial"]["name"]
    page.goto(server + "/sweeps/sweepy")
    page.wait_for_selector("#live.on")
    assert page.locator("#leaderboard tbody tr").count() == 2
    assert page.get_attribute("#best-link", "href") == f"/experiments/{best}"
    assert page.locator(f'#leaderboard tr.best[data-name="{best}"]').count() == 1
    lines = page.locator("#parallel svg polyline")
    assert lines.count() == 2
    assert sorted(lines.evaluate_all("ls => ls.map(l => l.dataset.trial)")) == ["sweepy-000", "sweepy-001"]
    assert drawn_pixels(page, "#chart-trials") > 200
    page.click("#best-link")
    page.wait_for_url(f"**/experiments/{best}")
    watched.inert()
    page.goto(server + "/sweeps/sweepy")
    page.wait_for_selector("#live.on")
    page.screenshot(path=str(DOCS_IMG / "ui-sweep.png"), full_page=True)


def test_compare_page_shows_the_parameter_difference_and_overlaid_curves(server: str, watched: Watched) -> None:
    page = watched.page
    page.goto(server + "/")
    page.check('input.pick[value="alpha"]')
    page.check('input.pick[value="beta"]')
    page.click("#compare")
    page.wait_for_url("**/compare?name=alpha&name=beta")
    rows = page.locator("#compare-table tbody tr").all_inner_texts()
    assert any(row.split("\t")[:3] == ["learningRate", "0.05", "0.01"] for row in rows), rows
    assert any(row.startswith("test accuracy") for row in rows)
    for chart in ("#chart-val", "#chart-loss"):
        assert drawn_pixels(page, chart) > 200, chart
    watched.inert()
    page.screenshot(path=str(DOCS_IMG / "ui-compare.png"), full_page=True)


def test_hostile_urls_are_shown_as_text(server: str, watched: Watched) -> None:
    page = watched.page
    response = page.goto(server + "/experiments/" + urllib.request.quote(HOSTILE, safe=""))
    assert response.status == 404
    assert HOSTILE in page.locator("main").inner_text()
    page.goto(server + "/compare?name=" + urllib.request.quote(HOSTILE, safe="") + "&name=alpha")
    assert HOSTILE in page.locator("#problem").inner_text() or HOSTILE in page.locator("h1").inner_text()
    watched.inert()


def test_a_run_shows_live_numbers_turns_succeeded_and_goes_when_deleted_without_a_reload(
        workspace: Path, server: str, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    page.goto(server + "/")
    page.wait_for_selector("#live.on")
    page.evaluate("() => { window.notReloaded = true; }")
    file = tmp_path / "live.yaml"
    file.write_text(yaml.safe_dump(experiment("live", clips=12, epochs=8)))
    training = subprocess.Popen([LANEX, "run", str(file), "--workspace", str(workspace)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        row = '#experiments tr[data-name="live"]'
        page.wait_for_selector(row, timeout=60000)  # the row appears by itself
        # a progress figure the page shows while training changes, with no reload
        page.wait_for_function(
            """sel => { const cell = document.querySelector(sel + ' td[data-key="progress"] .ptext');
                        return cell && /\\d+\\/8 \\d+%/.test(cell.textContent); }""", arg=row, timeout=120000)
        first = page.inner_text(f'{row} td[data-key="progress"] .ptext')
        page.wait_for_function(
            """([sel, first]) => { const t = document.querySelector(sel + ' td[data-key="progress"] .ptext').textContent;
                                   const p = document.querySelector(sel + ' .phase').textContent;
                                   return t !== first && p === 'Training'; }""", arg=[row, first], timeout=120000)
        page.wait_for_function("sel => document.querySelector(sel + ' .phase').textContent === 'Succeeded'", arg=row,
                               timeout=180000)
        assert training.wait(timeout=120) == 0
    finally:
        if training.poll() is None:
            training.terminate()
            training.wait(timeout=60)
    assert page.evaluate("() => window.notReloaded") is True
    assert page.get_attribute(f'{row} .phase', "class") == "phase ok"
    # the same deletion as `lanex delete live --workspace`, from a server that allows actions
    with lanex_ui("--workspace", str(workspace), "--allow-actions") as (actions_url, _):
        refused = _post(actions_url + "actions/stop/alpha")
        assert refused[0] == 409 and "not running" in refused[1]["error"]
        code, body = _post(actions_url + "actions/delete/live")
        assert code == 200, body
        assert "keeps: " in body["message"] and "snapshot live-" in body["message"]
    page.wait_for_selector(row, state="detached", timeout=15000)
    assert not (workspace / "experiments" / "live").exists()
    assert page.evaluate("() => window.notReloaded") is True
    watched.inert()


def _post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST", headers={"X-Lanex-Action": "1"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_read_only_server_has_no_action_endpoints(server: str) -> None:
    code, _ = _post_raw(server + "/actions/delete/alpha")
    assert code in (404, 405)


def _post_raw(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method="POST", headers={"X-Lanex-Action": "1"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
