"""`lanex run`: a LaneExperiment or LaneSweep on this machine (no cluster needed), through `lanex.Workspace`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from lanex_operator.cli.plumbing import DEFAULT_WORKSPACE


def run_command(
    experiment: Path = typer.Argument(..., help="LaneExperiment or LaneSweep YAML file."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, help="Local workspace: volumes, experiments, snapshots."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="A LaneSweep's trials running at once."),
    secret: List[str] = typer.Option(
        [], "--secret", help="NAME=file:PATH or NAME=env:VAR: the keys of the Secret NAME that the spec's secretRefs"
        " name (a folder of key files, or KEY=VALUE lines); repeatable. Values are never printed."),
) -> None:
    """Run a LaneExperiment on this machine: data, distributed training, evaluation, snapshot.

    A LaneSweep file runs its trials on clones of one prepared dataset, --parallel at a time, with a
    live leaderboard; it ends with the trials table and compare.png.
    """
    import lanex
    from lanex_operator.cli.submit import is_sweep_file

    if is_sweep_file(experiment):
        run_sweep(experiment, workspace, parallel, list(secret))
        return
    from rich.console import Console

    from lanex_operator.cli.local_views import print_summary

    console = Console(stderr=True)
    space = lanex.Workspace(workspace)
    try:
        exp = lanex.Experiment.from_file(experiment)
        space.run(exp, secrets=secret, show_output=True,
                  echo=lambda text: console.print(text, style="bold cyan", markup=False))
    except (lanex.InvalidSpecError, lanex.RunRefused, lanex.SecretSourceError, lanex.ExperimentBusy) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except lanex.Interrupted as error:
        typer.echo(f"\n{error} (`lanex run {experiment}`)", err=True)
        raise typer.Exit(130) from None
    except lanex.LocalRunError as error:
        typer.echo(f"error: {error}", err=True)
        typer.echo(f"run `lanex run {experiment}` again to continue from the failed step", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: run `lanex run {experiment}` again to resume", err=True)
        raise typer.Exit(130)
    print_summary(space.get(exp.name), space.results(exp.name))


def run_sweep(file: Path, workspace: Path, parallel: int, secrets: List[str]) -> None:
    """`lanex run sweep.yaml`: the dataset once, trials on clones, a live leaderboard, the final table."""
    from rich.console import Console
    from rich.live import Live

    import lanex
    from lanex_operator.cli.sweep_views import best_line, leaderboard

    console = Console(stderr=True)
    space = lanex.Workspace(workspace)
    try:
        sweep = lanex.Sweep.from_file(file)
    except lanex.InvalidSpecError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    try:
        with Live(leaderboard({}), console=console, refresh_per_second=2, transient=True) as live:
            record = space.run(sweep, parallel=parallel, secrets=secrets,
                               echo=lambda text: live.console.print(text, style="bold cyan", markup=False),
                               on_update=lambda shown: live.update(leaderboard(shown.document, title=sweep.name)))
    except (lanex.RunRefused, lanex.SecretSourceError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except (lanex.LocalRunError, lanex.SnapshotError) as error:
        typer.echo(f"error: {error}", err=True)
        typer.echo(f"run `lanex run {file}` again to continue", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: run `lanex run {file}` again to resume the sweep", err=True)
        raise typer.Exit(130)
    status = record.document
    phase = record.phase.value if record.phase else "-"
    out = Console()
    out.width = max(out.width, 132)
    out.print(leaderboard(status, title=f"{sweep.name}: {phase}"))
    out.print(best_line(status, sweep.spec.objective.metric))
    out.print(f"{'dataset:':12}{record.dataset_snapshot} (prepared once, cloned for every trial)")
    if record.compare_plot:
        out.print(f"{'compare:':12}{record.compare_plot}")
    if phase != "Succeeded":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
