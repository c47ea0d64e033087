"""examples/notebook.ipynb runs from top to bottom in a kernel of this environment: a small experiment,
its curves, a second run compared with it (two tiny synthetic runs, seconds each)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"

pytestmark = pytest.mark.timeout(300)


def kernel_spec(folder: Path) -> str:
    """A kernel of this very interpreter (the project's venv, PYTHONPATH included), whatever else is installed."""
    spec = folder / "kernels" / "lanex-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lanex tests", "language": "python"}))
    return "lanex-test"


def test_the_notebook_runs_an_experiment_plots_its_curves_and_compares_two_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # The notebook's folder is its working directory: it reads quickstart.yaml beside it, writes .lanex there.
    shutil.copy(ROOT / "examples" / "quickstart.yaml", tmp_path / "quickstart.yaml")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    name = kernel_spec(tmp_path / "jupyter")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(notebook, timeout=240, kernel_name=name,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "spec.training.epochs: must be >= 1 (got 0)" in text  # the invalid edit, named
    assert "Training" in text and "Succeeded" in text  # followed while it ran
    assert "notebook-a: learningRate 0.04, test accuracy " in text
    assert "notebook-b: learningRate 0.01, test accuracy " in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2  # the curves, the comparison
    state = json.loads((tmp_path / ".lanex" / "experiments" / "notebook-b" / "state.json").read_text())
    assert state["phase"] == "Succeeded" and "prepare" not in state["steps"]  # on the first run's snapshot
