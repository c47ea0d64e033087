"""How the local commands show a workspace: `lanex run`'s summary and `lanex get --workspace` (table,
JSON/YAML, `--watch`).

Why it exists: `lanex run` (local_commands) and `lanex get --workspace` (cluster_commands' `get`)
show the same records of a `lanex.Workspace`; the command modules do not import each other, so
both use these functions. What is shown comes from the `lanex` API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from lanex_operator.cli.views import decimal, dump, table

if TYPE_CHECKING:
    import lanex

LOCAL_GET_HEADERS = ("NAME", "PHASE", "PROGRESS", "LOSS", "IMG/S", "ETA", "VAL ACC", "ACCURACY", "SNAPSHOT")
# --watch prints rows one at a time, so its columns have fixed widths (PHASE fits ProvisioningDataset).
WATCH_WIDTHS = (12, 19, 10, 8, 7, 7, 8, 8, 0)
SWEEP_GET_HEADERS = ("SWEEP", "PHASE", "TRIALS", "RUNNING", "BEST", "OBJECTIVE", "DATASET")


def print_summary(record: "lanex.ExperimentRecord", results: "lanex.RunResults") -> None:
    """`lanex run`'s last words: one row (phase, processes, test metrics, snapshot, duration) and the files."""
    from rich.console import Console
    from rich.table import Table

    table_ = Table(box=None, header_style="bold")
    for column in ("NAME", "PHASE", "WORKERS", "ACCURACY", "FP", "FN", "SNAPSHOT", "DURATION"):
        table_.add_column(column, no_wrap=True)
    seconds = record.document.get("seconds")
    duration = "-" if seconds is None else f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
    table_.add_row(record.name, record.phase.value if record.phase else "-", str(results.processes or "-"),
                   decimal(results.accuracy), decimal(results.fp), decimal(results.fn), record.snapshot or "-",
                   duration)
    console = Console()
    console.width = max(console.width, 132)  # a full row even when piped (rich assumes 80 columns)
    console.print(table_)
    for key, value in (("results", results.results_file), ("curves", results.curves), ("worst", results.worst),
                       ("overlays", results.overlays and results.overlays.rstrip("/")),
                       ("checkpoint", results.checkpoint)):
        if value:
            console.print(f"{key + ':':12}{value}")


def watch_line(cells: Any, names_width: int) -> str:
    widths = (max(names_width, WATCH_WIDTHS[0]), *WATCH_WIDTHS[1:])
    return "   ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()


def local_row(record: "lanex.ExperimentRecord") -> list[str]:
    """One `lanex get --workspace` row."""
    from lanex_trainer.progress import human_seconds

    progress = record.progress
    running = progress is not None and progress.state != "finished" and record.running is not False
    phase = record.phase.value if record.phase else "-"
    if record.running is False and not record.finished:
        phase += " (stopped)"  # killed or interrupted: `lanex run` again resumes it
    validation = progress.validation if progress is not None else None
    rate = progress.images_per_second if progress is not None else None
    return [record.name, phase, progress.summary() if progress is not None else "-",
            decimal(progress.loss if progress is not None else None), "-" if rate is None else f"{rate:.1f}",
            human_seconds(progress.eta_seconds) if running and progress is not None else "-",
            decimal(validation.accuracy if validation is not None else None), decimal(record.results.accuracy),
            record.snapshot or "-"]


def sweep_row(sweep: "lanex.SweepRecord") -> list[str]:
    """One `lanex get --workspace` row of a local sweep, the columns of `kubectl get lxs`."""
    best = sweep.best
    return [sweep.name, sweep.phase.value if sweep.phase else "-", str(len(sweep.trials) or "-"),
            str(sweep.counts.running if sweep.counts else 0), best.name if best else "-",
            decimal(best.objective if best else None), sweep.dataset_snapshot or "-"]


def get_local(workspace: Path, name: Optional[str], output: Optional[str], watch: bool) -> None:
    """`lanex get --workspace DIR`: one table (or JSON/YAML document); with --watch, a row per change
    until every experiment shown is Succeeded or Failed, or its `lanex run` has stopped."""
    import lanex

    space = lanex.Workspace(workspace)
    sweeps = [s for s in space.list_sweeps() if name is None or s.name == name]
    try:
        named_sweep = name is not None and bool(sweeps)  # NAME is a sweep: its trials are listed in the sweep
        experiments = [] if named_sweep else ([space.get(name)] if name else space.list())
        if watch and not named_sweep:
            _watch_local(space, name, output, max([len(e.name) for e in experiments] or [0]))
            return
    except lanex.LocalRunError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if output:
        typer.echo(dump({"experiments": [e.document for e in experiments], "sweeps": [s.document for s in sweeps]},
                        output))
        return
    if experiments:
        typer.echo(table(LOCAL_GET_HEADERS, [local_row(e) for e in experiments]))
    if sweeps:
        typer.echo(("\n" if experiments else "") + table(SWEEP_GET_HEADERS, [sweep_row(s) for s in sweeps]))
    if not experiments and not sweeps:
        typer.echo(f"No local experiments in workspace {workspace}.", err=True)


def _watch_local(space: "lanex.Workspace", name: Optional[str], output: Optional[str], names_width: int) -> None:
    """A row (or a document, like kubectl -w) each time an experiment changes."""
    if output is None:
        typer.echo(watch_line(LOCAL_GET_HEADERS, names_width))
    shown: dict[str, list[str]] = {}
    for record in space.watch(name):
        if output is not None:
            document = dump(record.document, output).rstrip()
            typer.echo(document if output == "json" else f"---\n{document}")
            continue
        row = local_row(record)
        if shown.get(record.name) != row:  # a change the columns do not show is no new row
            shown[record.name] = row
            typer.echo(watch_line(row, names_width))
