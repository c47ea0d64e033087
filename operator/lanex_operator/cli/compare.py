"""`lanex compare NAME...`: experiments, or a sweep's trials, side by side, and one overlay plot.

Why it exists: a sweep (or a few hand-made experiments) is only useful if its runs can be read
against each other: their parameters, test metrics and validation curves. The runs come from the
cluster (LaneExperiments; a LaneSweep expands into its trials) or, with --workspace, from a local
workspace; both are reduced to the same run dicts (`sweep_views.compare_rows`), and the overlay
plot (validation accuracy per epoch of every run) is drawn by the trainer's plotting helper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer


def cluster_runs(names: list[str], namespace: Optional[str]) -> list[dict[str, Any]]:
    from lanex_operator.api.sweep import TRIAL_PARAMETERS_ANNOTATION
    from lanex_operator.cli.cluster_client import ClusterError
    from lanex_operator.cli.cluster_commands import connect
    from lanex_operator.controller.sweeps import trial_history

    cluster = connect(namespace)
    objects: list[dict[str, Any]] = []
    for name in names:
        found = cluster.find_experiment(name)
        if found is not None:
            objects.append(found)
            continue
        if cluster.find_sweep(name) is None:
            raise ClusterError(f"no laneexperiment or lanesweep {cluster.namespace}/{name}", 404)
        objects += cluster.list_trials(name)
    runs = []
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        status = obj.get("status") or {}
        parameters = json.loads(annotations[TRIAL_PARAMETERS_ANNOTATION]) if TRIAL_PARAMETERS_ANNOTATION in annotations else None
        runs.append({"name": obj["metadata"]["name"], "phase": status.get("phase"), "parameters": parameters,
                     "training": (obj.get("spec") or {}).get("training") or {},
                     "results": status.get("results") or {}, "history": list(trial_history(obj))})
    return runs


def local_runs(names: list[str], workspace: Path) -> list[dict[str, Any]]:
    from lanex_operator.local.runner import LocalRunError, local_experiments
    from lanex_operator.local.sweep import validation_history, workspace_sweeps

    sweeps = {s["name"]: s for s in workspace_sweeps(workspace)}
    wanted: list[tuple[str, Optional[dict[str, Any]]]] = []
    for name in names:
        if name in sweeps:
            wanted += [(row["name"], row.get("parameters")) for row in sweeps[name].get("trials") or []]
        else:
            wanted.append((name, None))
    runs = []
    for name, parameters in wanted:
        try:
            (experiment,) = local_experiments(workspace, name)
        except LocalRunError:
            if parameters is None:
                raise
            runs.append({"name": name, "phase": "Deleted", "parameters": parameters, "results": {}, "history": []})
            continue
        state_file = workspace / "experiments" / name / "state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        output_dir = state.get("outputDir")
        runs.append({"name": name, "phase": experiment.get("phase"), "parameters": parameters,
                     "training": state.get("training") or {}, "results": experiment.get("results") or {},
                     "history": validation_history(Path(output_dir)) if output_dir else []})
    return runs


def compare_command(
    names: List[str] = typer.Argument(..., help="Experiments, or a sweep (its trials), to compare."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace (cluster)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Compare local runs of this workspace."),
    out: Path = typer.Option(Path("compare.png"), "--out", help="Where to write the overlay plot."),
) -> None:
    """Parameters and metrics side by side, and the validation accuracy per epoch of every run in one plot.

    Exit codes: 0 shown, 1 not found or API error.
    """
    from lanex_operator.cli.cluster_commands import reporting
    from lanex_operator.cli.sweep_views import compare_rows, differing_training
    from lanex_operator.cli.views import table

    with reporting():
        if workspace is not None:
            from lanex_operator.local.runner import LocalRunError

            try:
                runs = local_runs(list(names), workspace)
            except LocalRunError as error:
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(1) from error
        else:
            runs = cluster_runs(list(names), namespace)
    differing = differing_training({run["name"]: run.get("training") or {} for run in runs})
    for run in runs:
        if run.get("parameters") is None:
            run["parameters"] = differing.get(run["name"], {})
    headers, rows = compare_rows(runs)
    typer.echo(table(headers, rows))
    try:
        from lanex_trainer.curves import plot_comparison
    except ImportError:
        typer.echo("note: no plot (matplotlib comes with the trainer extra: pip install 'lanex[trainer]')", err=True)
        return
    plot_comparison({run["name"]: run.get("history") or [] for run in runs}, out)
    typer.echo(f"plot: {out}")
