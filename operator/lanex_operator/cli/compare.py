"""`lanex compare NAME...`: experiments, or a sweep's trials, side by side, and one overlay plot.

Why it exists: a sweep (or a few hand-made experiments) is only useful if its runs can be read
against each other: their parameters, test metrics and validation curves. The runs come from
`lanex.Cluster.compare` (LaneExperiments; a LaneSweep expands into its trials) or, with --workspace,
`lanex.Workspace.compare`; both give the same records (`lanex.ComparedRun`), shown side by side by
`sweep_views.compare_rows`, and the overlay plot (validation accuracy per epoch of every run) is
drawn by the trainer's plotting helper.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def compare_command(
    names: List[str] = typer.Argument(..., help="Experiments, or a sweep (its trials), to compare."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace (cluster)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Compare local runs of this workspace."),
    out: Path = typer.Option(Path("compare.png"), "--out", help="Where to write the overlay plot."),
) -> None:
    """Parameters and metrics side by side, and the validation accuracy per epoch of every run in one plot.

    Exit codes: 0 shown, 1 not found or API error.
    """
    import lanex
    from lanex_operator.cli.plumbing import connect, reporting
    from lanex_operator.cli.sweep_views import compare_rows, differing_training, run_dict
    from lanex_operator.cli.views import table

    with reporting():
        if workspace is not None:
            try:
                compared = lanex.Workspace(workspace).compare(list(names))
            except lanex.LocalRunError as error:
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(1) from error
        else:
            compared = connect(namespace).compare(list(names))
    runs = [run_dict(run) for run in compared]
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
