"""`lanex snapshots list|restore`: snapshots of a local workspace, or with --cluster the VolumeSnapshots
of lanex experiments, through `lanex.Workspace` and `lanex.Cluster`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lanex_operator.cli.plumbing import DEFAULT_WORKSPACE, connect, reporting
from lanex_operator.cli.submit import UsageError

snapshots_app = typer.Typer(help="Snapshots of experiment volumes (local workspace, or the cluster with --cluster).",
                            no_args_is_help=True)


@snapshots_app.command("list")
def snapshots_list(
    experiment_arg: Optional[str] = typer.Argument(None, help="Only this experiment's snapshots."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, help="Local workspace."),
    experiment: Optional[str] = typer.Option(None, help="Only this experiment's snapshots."),
    cluster: bool = typer.Option(False, "--cluster", help="The cluster's VolumeSnapshots (current kubeconfig)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="With --cluster: the namespace."),
) -> None:
    """List local snapshots, oldest first; with --cluster, the VolumeSnapshots of lanex experiments."""
    import lanex

    experiment = experiment or experiment_arg
    if cluster:
        from lanex_operator.cli.views import snapshot_table

        with reporting():
            on = connect(namespace)
            found = on.snapshots(experiment)
            if not found:
                where = f"experiment {experiment}" if experiment else "lanex experiments"
                typer.echo(f"No VolumeSnapshots of {where} in namespace {on.namespace}.", err=True)
                return
            typer.echo(snapshot_table([s.document for s in found], experiment))
        return
    for info in lanex.Workspace(workspace).snapshots(experiment):
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
    import lanex

    if cluster:
        _restore_on_cluster(name, to, namespace, storage_class, print_experiment)
        return
    if to is None or storage_class is not None or print_experiment:
        typer.echo("error: --to is required; --storage-class and --print-experiment need --cluster", err=True)
        raise typer.Exit(2)
    try:
        target = lanex.Workspace(workspace).restore(name, to)
    except lanex.SnapshotError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"restored {name} into {target} (verified)")


def _restore_on_cluster(name: str, to: Optional[str], namespace: Optional[str], storage_class: Optional[str],
                        print_experiment: bool) -> None:
    from lanex_operator.cli.views import dump

    with reporting():
        cluster = connect(namespace)
        if print_experiment:
            experiment = cluster.restore_experiment(name, to, storage_class)
            typer.echo(f"# A LaneExperiment whose dataset volume is restored from {name}; submit it with lanex submit.")
            typer.echo(dump(experiment.to_dict(), "yaml"))
            return
        if not to:
            raise UsageError("--to CLAIM is required (or --print-experiment)")
        created = cluster.restore(name, to, storage_class)
        size = created["spec"]["resources"]["requests"]["storage"]
        typer.echo(f"persistentvolumeclaim {cluster.namespace}/{to} created from volumesnapshot {name} "
                   f"(storage class {created['spec'].get('storageClassName')}, size {size})")
        typer.echo(f"train on it with: lanex submit EXPERIMENT.yaml --pvc {to}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(snapshots_app, name="snapshots")
