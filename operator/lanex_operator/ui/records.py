"""The shapes the pages show, made from the records the CLI prints.

Why it exists: a local workspace (`lanex get --workspace -o json`) and the cluster (`lanex get`,
`lanex describe`) present an experiment with different columns; the pages need one shape for both.
The cell texts come from the CLI's own row functions (`local_commands.local_row`,
`views.experiment_row`, `sweep_views.trial_rows`), so a page and a terminal never disagree; this
module only adds what a table cannot show (a progress fraction for the bar, sort keys, links).
Pure: dicts in, dicts out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

FINAL_PHASES = ("Succeeded", "Failed", "Stopped")

# The columns of the home page's experiments table: (key, header).
EXPERIMENT_COLUMNS = (("name", "Name"), ("phase", "Phase"), ("progress", "Progress"), ("eta", "ETA"),
                      ("loss", "Loss"), ("rate", "Images/s"), ("valAcc", "Val acc"), ("accuracy", "Accuracy"),
                      ("fp", "FP"), ("fn", "FN"), ("snapshot", "Snapshot"), ("age", "Age"))
SWEEP_COLUMNS = (("name", "Sweep"), ("phase", "Phase"), ("trials", "Trials"), ("running", "Running"),
                 ("best", "Best trial"), ("objective", "Objective"), ("dataset", "Dataset"), ("age", "Age"))


def fraction(progress: Optional[Mapping[str, Any]], phase: Optional[str]) -> float:
    """How much of the run's steps are done, 0..1 (1 for a Succeeded run whose progress is gone)."""
    progress = progress or {}
    step, steps = progress.get("step"), progress.get("steps")
    if isinstance(step, (int, float)) and isinstance(steps, (int, float)) and steps > 0:
        return round(min(1.0, max(0.0, step / steps)), 4)
    return 1.0 if phase == "Succeeded" else 0.0


def phase_class(phase: Optional[str]) -> str:
    """A CSS class for a phase text (`Training (stopped)` is a Training that is not going on)."""
    base = (phase or "").split(" ")[0]
    if base in ("Succeeded",):
        return "ok"
    if base in ("Failed",) or "(stopped)" in (phase or ""):
        return "bad"
    if base in ("Stopped",):
        return "stopped"
    return "busy" if base else "none"


def experiment_view(cells: Mapping[str, str], *, name: str, phase: Optional[str], progress: Optional[Mapping[str, Any]],
                    started: Optional[str], final: bool, sweep: Optional[str] = None,
                    message: Optional[str] = None) -> dict[str, Any]:
    """One home-page row: the CLI's cells plus the bar's fraction and the facts the filters use."""
    row = {key: str(cells.get(key, "-")) for key, _ in EXPERIMENT_COLUMNS}
    row.update(name=name, kind="experiment", phaseClass=phase_class(row["phase"]), fraction=fraction(progress, phase),
               started=started or "", final=final, sweep=sweep or "", message=message or "")
    return row


def sweep_view(cells: Mapping[str, str], *, name: str, started: Optional[str], final: bool) -> dict[str, Any]:
    row = {key: str(cells.get(key, "-")) for key, _ in SWEEP_COLUMNS}
    row.update(name=name, kind="sweep", phaseClass=phase_class(row["phase"]), started=started or "", final=final)
    return row


def flat_items(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A spec as `(dotted.path, value)` pairs for a definition list (values as text, never markup)."""
    items: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            items += flat_items(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        if not node:
            items.append((prefix.rstrip("."), "[]"))
        for index, value in enumerate(node):
            items += flat_items(value, f"{prefix}{index}.")
    elif node is not None:
        items.append((prefix.rstrip("."), str(node)))
    return items


def restore_commands(snapshot: str, source: str, *, workspace: Optional[str] = None,
                     namespace: Optional[str] = None) -> list[dict[str, str]]:
    """The commands that bring a result snapshot back, to copy from the page."""
    target = f"{source}-restored"
    if workspace is not None:
        return [
            {"what": "restore it into a new local volume",
             "command": f"lanex snapshots restore {snapshot} --to {target}-data --workspace {workspace}"},
            {"what": "or train on it: in a LaneExperiment file",
             "command": f"spec.dataset.fromSnapshot.snapshotName: {snapshot}"},
        ]
    ns = f" -n {namespace}" if namespace else ""
    return [
        {"what": "restore it into a new PVC", "command": f"lanex snapshots restore {snapshot} --cluster{ns} --to {target}-data"},
        {"what": "or create an experiment that trains on it",
         "command": f"lanex snapshots restore {snapshot} --cluster{ns} --print-experiment --to {target} | kubectl apply -f -"},
        {"what": "the VolumeSnapshot itself", "command": f"kubectl get volumesnapshot {snapshot}{ns} -o yaml"},
    ]


def mlflow_link(*documents: Optional[Mapping[str, Any]]) -> Optional[dict[str, str]]:
    """The experiment's MLflow run, when its status or results carry one (`tracking.mlflow` or `mlflow`,
    with `runUrl`/`url` and/or `runId`)."""
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        for found in ((document.get("tracking") or {}).get("mlflow") if isinstance(document.get("tracking"), Mapping)
                      else None, document.get("mlflow")):
            if not isinstance(found, Mapping):
                continue
            url = found.get("runUrl") or found.get("url")
            run_id = found.get("runId") or found.get("run_id")
            if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
                return {"url": url, "text": str(run_id or url)}
            if run_id:
                return {"url": "", "text": f"MLflow run {run_id}"}
    return None


def compare_series(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Validation histories of the runs compared, for the overlay chart."""
    return {str(run["name"]): [dict(h) for h in run.get("history") or []] for run in runs}
