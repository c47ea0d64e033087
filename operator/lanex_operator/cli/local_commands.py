"""`lanex run`, `lanex get --workspace` and `lanex snapshots` for local experiments (no cluster needed)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_WORKSPACE = Path(".lanex")

snapshots_app = typer.Typer(help="Snapshots of experiment volumes (local workspace, or the cluster with --cluster).",
                            no_args_is_help=True)


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
    from rich.console import Console

    from lanex_operator.api import ExperimentFileError, load_experiment_file
    from lanex_operator.api.files import read_document
    from lanex_operator.api.sweep_files import document_kind
    from lanex_operator.local.runner import ExperimentBusy, Interrupted, LocalRunError, LocalRunner
    from lanex_operator.local.secrets import SecretSourceError, parse_secret_option
    from lanex_operator.api.models import InvalidSpecError

    console = Console(stderr=True)
    try:
        secrets = {source.name: source for source in map(parse_secret_option, secret)}
        if document_kind(read_document(experiment)) == "LaneSweep":
            run_sweep(experiment, workspace, parallel, secrets)
            return
        metadata, spec = load_experiment_file(experiment)
        runner = LocalRunner(metadata["name"], spec, workspace, secrets=secrets,
                             echo=lambda text: console.print(text, style="bold cyan", markup=False))
    except (ExperimentFileError, InvalidSpecError, LocalRunError, SecretSourceError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    try:
        summary = runner.run()
    except ExperimentBusy as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except Interrupted as error:
        typer.echo(f"\n{error} (`lanex run {experiment}`)", err=True)
        raise typer.Exit(130) from None
    except LocalRunError as error:
        typer.echo(f"error: {error}", err=True)
        typer.echo(f"run `lanex run {experiment}` again to continue from the failed step", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: run `lanex run {experiment}` again to resume", err=True)
        raise typer.Exit(130)
    print_summary(summary)


def run_sweep(file: Path, workspace: Path, parallel: int, secrets: Optional[dict] = None) -> None:
    """`lanex run sweep.yaml`: the dataset once, trials on clones, a live leaderboard, the final table."""
    from rich.console import Console
    from rich.live import Live

    from lanex_operator.api import ExperimentFileError
    from lanex_operator.api.models import InvalidSpecError
    from lanex_operator.api.sweep_files import load_sweep_file
    from lanex_operator.cli.sweep_views import best_line, leaderboard
    from lanex_operator.local.runner import LocalRunError
    from lanex_operator.local.snapshots import SnapshotError
    from lanex_operator.local.sweep import LocalSweep

    console = Console(stderr=True)
    try:
        metadata, spec = load_sweep_file(file)
        sweep = LocalSweep(metadata["name"], spec, workspace, parallel=parallel, secrets=dict(secrets or {}),
                           echo=lambda text: console.print(text, style="bold cyan", markup=False))
    except (ExperimentFileError, InvalidSpecError, LocalRunError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    try:
        with Live(leaderboard({}), console=console, refresh_per_second=2, transient=True) as live:
            sweep.echo = lambda text: live.console.print(text, style="bold cyan", markup=False)
            status = sweep.run(on_update=lambda views: live.update(leaderboard(sweep.state, title=sweep.name)))
    except (LocalRunError, SnapshotError) as error:
        typer.echo(f"error: {error}", err=True)
        typer.echo(f"run `lanex run {file}` again to continue", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: run `lanex run {file}` again to resume the sweep", err=True)
        raise typer.Exit(130)
    out = Console()
    out.width = max(out.width, 132)
    out.print(leaderboard(status, title=f"{sweep.name}: {status['phase']}"))
    out.print(best_line(status, spec.objective.metric))
    out.print(f"{'dataset:':12}{status.get('datasetSnapshot')} (prepared once, cloned for every trial)")
    if status.get("comparePlot"):
        out.print(f"{'compare:':12}{status['comparePlot']}")
    if status["phase"] != "Succeeded":
        raise typer.Exit(1)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from lanex_operator.cli.views import decimal

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "PHASE", "WORKERS", "ACCURACY", "FP", "FN", "SNAPSHOT", "DURATION"):
        table.add_column(column, no_wrap=True)
    seconds = summary.get("seconds")
    duration = "-" if seconds is None else f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
    table.add_row(summary["name"], summary["phase"], str(summary["workers"]), decimal(summary["accuracy"]),
                  decimal(summary["fp"]), decimal(summary["fn"]), summary["snapshot"] or "-", duration)
    console = Console()
    console.width = max(console.width, 132)  # a full row even when piped (rich assumes 80 columns)
    console.print(table)
    for key in ("results", "curves", "worst", "overlays", "checkpoint"):
        if summary.get(key):
            console.print(f"{key + ':':12}{summary[key]}")


LOCAL_GET_HEADERS = ("NAME", "PHASE", "PROGRESS", "LOSS", "IMG/S", "ETA", "VAL ACC", "ACCURACY", "SNAPSHOT")
# --watch prints rows one at a time, so its columns have fixed widths (PHASE fits ProvisioningDataset).
WATCH_WIDTHS = (12, 19, 10, 8, 7, 7, 8, 8, 0)


def watch_line(cells, names_width: int) -> str:
    widths = (max(names_width, WATCH_WIDTHS[0]), *WATCH_WIDTHS[1:])
    return "   ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()


def local_row(experiment: dict) -> list[str]:
    from lanex_operator.cli.views import decimal
    from lanex_operator.local.runner import FINAL_PHASES
    from lanex_trainer.progress import human_seconds, progress_summary

    progress = experiment.get("progress") or {}
    validation = progress.get("validation") or {}
    running = progress and progress.get("state") != "finished" and experiment.get("running") is not False
    rate = progress.get("imagesPerSecond")
    phase = experiment.get("phase") or "-"
    if experiment.get("running") is False and phase not in FINAL_PHASES:
        phase += " (stopped)"  # killed or interrupted: `lanex run` again resumes it
    return [experiment["name"], phase, progress_summary(progress) if progress else "-",
            decimal(progress.get("loss")), "-" if rate is None else f"{rate:.1f}",
            human_seconds(progress.get("etaSeconds")) if running else "-",
            decimal(validation.get("accuracy")), decimal(experiment["results"].get("accuracy")),
            experiment.get("snapshot") or "-"]


SWEEP_GET_HEADERS = ("SWEEP", "PHASE", "TRIALS", "RUNNING", "BEST", "OBJECTIVE", "DATASET")


def sweep_row(sweep: dict) -> list[str]:
    """One `lanex get --workspace` row of a local sweep, the columns of `kubectl get lxs`."""
    from lanex_operator.cli.views import decimal

    best = sweep.get("bestTrial") or {}
    return [sweep["name"], sweep.get("phase") or "-", str(sweep.get("trialCount") or "-"),
            str((sweep.get("counts") or {}).get("running", 0)), best.get("name") or "-",
            decimal(best.get("objective")), sweep.get("datasetSnapshot") or "-"]


def get_local(workspace: Path, name: Optional[str], output: Optional[str], watch: bool, poll_s: float = 0.5) -> None:
    """`lanex get --workspace DIR`: one table (or JSON/YAML document); with --watch, a row per change
    until every experiment shown is Succeeded or Failed, or its `lanex run` has stopped."""
    import time

    from lanex_operator.cli.views import dump, table
    from lanex_operator.local.runner import FINAL_PHASES, LocalRunError, local_experiments
    from lanex_operator.local.sweep import workspace_sweeps

    sweeps = [s for s in workspace_sweeps(workspace) if name is None or s["name"] == name]

    def read() -> list[dict]:
        if name is not None and sweeps:
            return []  # NAME is a sweep: its trials are listed in the sweep
        try:
            return local_experiments(workspace, name)
        except LocalRunError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error

    experiments = read()
    if not watch:
        if output:
            typer.echo(dump({"experiments": experiments, "sweeps": sweeps}, output))
            return
        if experiments:
            typer.echo(table(LOCAL_GET_HEADERS, [local_row(e) for e in experiments]))
        if sweeps:
            typer.echo(("\n" if experiments else "") + table(SWEEP_GET_HEADERS, [sweep_row(s) for s in sweeps]))
        if not experiments and not sweeps:
            typer.echo(f"No local experiments in workspace {workspace}.", err=True)
        return
    shown: dict[str, object] = {}
    if output is None:
        names_width = max([len(e["name"]) for e in experiments] or [0])
        typer.echo(watch_line(LOCAL_GET_HEADERS, names_width))
    try:
        while True:
            for experiment in experiments:
                row = local_row(experiment) if output is None else experiment
                if shown.get(experiment["name"]) == row:
                    continue
                shown[experiment["name"]] = row
                if output is None:
                    typer.echo(watch_line(row, names_width))
                else:
                    document = dump(experiment, output).rstrip()  # one document per change, like kubectl -w
                    typer.echo(document if output == "json" else f"---\n{document}")
            if experiments and all(e.get("phase") in FINAL_PHASES or e.get("running") is False for e in experiments):
                return
            time.sleep(poll_s)
            experiments = read()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@snapshots_app.command("list")
def snapshots_list(
    experiment_arg: Optional[str] = typer.Argument(None, help="Only this experiment's snapshots."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, help="Local workspace."),
    experiment: Optional[str] = typer.Option(None, help="Only this experiment's snapshots."),
    cluster: bool = typer.Option(False, "--cluster", help="The cluster's VolumeSnapshots (current kubeconfig)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="With --cluster: the namespace."),
) -> None:
    """List local snapshots, oldest first; with --cluster, the VolumeSnapshots of lanex experiments."""
    experiment = experiment or experiment_arg
    if cluster:
        from lanex_operator.cli.cluster_commands import snapshots_list_cluster

        snapshots_list_cluster(namespace, experiment)
        return
    from lanex_operator.local.runner import Workspace

    for info in Workspace(workspace).snapshots.list():
        if experiment and info.experiment != experiment:
            continue
        typer.echo(f"{info.name}\t{info.created}\t{info.files} files\t{info.bytes / 1e6:.1f} MB\t{info.experiment or '-'}")


@snapshots_app.command("restore")
def snapshots_restore(
    name: str = typer.Argument(..., help="Snapshot name."),
    to: Optional[str] = typer.Option(None, "--to", help="Name of the new volume (claim) to restore into."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, help="Local workspace."),
    cluster: bool = typer.Option(False, "--cluster", help="Restore a VolumeSnapshot into a new PVC on the cluster."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="With --cluster: the namespace."),
    storage_class: Optional[str] = typer.Option(None, "--storage-class",
                                                help="With --cluster: storage class (default: the source experiment's)."),
    print_experiment: bool = typer.Option(False, "--print-experiment",
                                          help="With --cluster: print a LaneExperiment using dataset.fromSnapshot "
                                               "(named by --to) instead of creating a PVC."),
) -> None:
    """Restore a snapshot into a new local volume, verified file by file against its manifest.

    With --cluster: a new PVC whose dataSource is the VolumeSnapshot (exit 1 on API errors or a
    snapshot not ready, 2 on bad flags).
    """
    if cluster:
        from lanex_operator.cli.cluster_commands import snapshots_restore_cluster

        snapshots_restore_cluster(name, to, namespace, storage_class, print_experiment)
        return
    if to is None or storage_class is not None or print_experiment:
        typer.echo("error: --to is required; --storage-class and --print-experiment need --cluster", err=True)
        raise typer.Exit(2)
    from lanex_operator.local.runner import Workspace
    from lanex_operator.local.snapshots import SnapshotError

    space = Workspace(workspace)
    try:
        target = space.snapshots.restore(name, space.volume(to))
    except SnapshotError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"restored {name} into {target} (verified)")


def stop_command(
    name: str = typer.Argument(..., help="Local experiment or sweep."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, help="Local workspace."),
) -> None:
    """Stop the `lanex run` of a local experiment or sweep, as Ctrl-C in its terminal would: training
    checkpoints its step and ends; running the same file again resumes. Exit codes: 0 asked, 1 not running."""
    from lanex_operator.local.actions import stop_local
    from lanex_operator.local.runner import LocalRunError

    try:
        typer.echo(stop_local(workspace, name))
    except LocalRunError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("stop")(stop_command)
    app.add_typer(snapshots_app, name="snapshots")
