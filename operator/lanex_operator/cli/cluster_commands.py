"""`lanex submit|get|describe|logs|wait|delete`: LaneExperiments and LaneSweeps on Kubernetes.

Why it exists: TR-4896's users drove training with `runai submit-mpi` and `kubectl`; these commands
give the same convenience on top of the CRDs. Each is a thin layer over `lanex.Cluster` (what it
does) and `views`/`sweep_views` (how it is shown); a name is an experiment, else a sweep of that
name. The `lanex` API (and with it the Kubernetes client) is imported only inside the commands, so
`lanex --help` stays fast.

Exit codes, the same for every command: 0 done, 1 API error or failed experiment, 2 invalid file or
flags or no Kubernetes configuration, 124 `wait` timed out.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from lanex_operator.cli.plumbing import EXIT_USAGE, connect, fail, reporting
from lanex_operator.cli.submit import SubmitOverrides, UsageError, blame, submitted
from lanex_operator.cli.views import (
    EXPERIMENT_HEADERS,
    WATCH_WIDTHS,
    WatchTable,
    describe_lines,
    dump,
    experiment_row,
    outcome,
    parse_wait_for,
    table,
)

if TYPE_CHECKING:
    import lanex

NAMESPACE_OPTION = typer.Option(None, "--namespace", "-n",
                                help="Namespace (default: the kubeconfig context's, else default).")


# --- submit ------------------------------------------------------------------------------------


def submit_command(
    experiment: Path = typer.Argument(..., help="LaneExperiment (or LaneSweep) YAML file."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n",
                                            help="Namespace (default: the file's metadata.namespace, else the "
                                                 "kubeconfig context's, else default)."),
    name: Optional[str] = typer.Option(None, "--name", help="Override metadata.name."),
    processes: Optional[int] = typer.Option(None, "--processes", help="Worker pods (spec.training.workers)."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="GPUs per worker (spec.training.gpusPerWorker)."),
    pvc: Optional[str] = typer.Option(None, "--pvc", help="Existing claim holding the dataset, CLAIM or CLAIM:/mnt "
                                                          "(spec.dataset.existingClaim, replaces the file's source)."),
    env: List[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable (spec.training.env); BATCH_SIZE, "
                                                         "NUM_WORKERS, USE_WORKERS, USE_VAL, VAL_BATCH_SIZE and "
                                                         "ENABLE_SNAPSHOT set their typed fields."),
    large_shm: Optional[bool] = typer.Option(None, "--large-shm/--no-large-shm",
                                             help="Memory-backed /dev/shm (spec.training.largeShm)."),
    project: Optional[str] = typer.Option(None, "--project", "-p",
                                          help="RUN:ai project (spec.scheduler: runai with this project)."),
) -> None:
    """Create a LaneExperiment (or LaneSweep) from a file, with runai-style flags overriding it.

    An experiment that already exists with the same spec is left alone (exit 0); one with a
    different spec is refused (exit 1). Exit codes: 0 created or unchanged, 1 API error or
    conflict, 2 invalid file or flags.
    """
    import lanex

    flags = SubmitOverrides(processes=processes, gpu=gpu, pvc=pvc, env=tuple(env), large_shm=large_shm,
                            project=project)
    with reporting():
        resource, file_namespace, origin = submitted(experiment, flags, name, namespace)
        cluster = connect(namespace or file_namespace)
        scheduler = None if isinstance(resource, lanex.Sweep) else resource.spec.scheduler
        if scheduler is not None and scheduler.type == "runai" and cluster.namespace != f"runai-{scheduler.project}":
            typer.echo(f"note: RUN:ai runs project {scheduler.project}'s jobs in namespace "
                       f"runai-{scheduler.project}; this experiment goes to {cluster.namespace} (-n to change)",
                       err=True)
        try:
            done = cluster.submit(resource)
        except lanex.InvalidSpecError as error:  # the CRD's schema: name the file, and the flag that set it
            raise UsageError("; ".join(f"{experiment}: {p}" for p in blame(error.problems, origin))) from None
        kind = "lanesweep" if isinstance(resource, lanex.Sweep) else "laneexperiment"
        ref = f"{kind} {cluster.namespace}/{resource.name}"
        if done.created:
            typer.echo(f"{ref} created")
        else:
            phase = done.record.phase.value if done.record.phase else "-"
            typer.echo(f"{ref} already exists with the same spec (phase: {phase})")


# --- get, describe ------------------------------------------------------------------------------


def get_command(
    name: Optional[str] = typer.Argument(None, help="Experiment name (default: all in the namespace)."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="json or yaml (default: a table)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace",
                                             help="The local experiments and sweeps of this `lanex run` workspace "
                                                  "instead (phase, progress, accuracy, snapshot; no cluster)."),
    watch: bool = typer.Option(False, "--watch", "-w",
                               help="After the table, print a row whenever one changes (with --workspace: until "
                                    "all are Succeeded or Failed, or their `lanex run` stopped)."),
) -> None:
    """List LaneExperiments like `kubectl get lx`: NAME, PHASE, PROGRESS, ETA, WORKERS, ACCURACY, SNAPSHOT, AGE.

    With --workspace DIR: the local experiments (and sweeps) of that workspace, also while one trains in
    another terminal. Exit codes: 0 shown (or -w interrupted), 1 not found or API error, 2 bad --output.
    """
    if output not in (None, "json", "yaml"):
        fail(f"--output {output}: must be json or yaml", EXIT_USAGE)
    if workspace is not None:
        from lanex_operator.cli.local_views import get_local

        get_local(workspace, name, output, watch)
        return
    if watch and output:
        fail("--watch shows the table; for objects use kubectl get lx -w -o json", EXIT_USAGE)
    from lanex_operator.cli.sweep_views import SWEEP_HEADERS, sweep_row

    with reporting():
        cluster = connect(namespace)
        if watch:
            _watch_table(cluster, name)
            return
        now = datetime.now(timezone.utc)
        if name and cluster.find(name) is None:
            sweep = cluster.find_sweep(name)
            if sweep is not None:
                typer.echo(dump(sweep.document, output) if output else table(SWEEP_HEADERS, [sweep_row(sweep.document, now)]))
                return
        items = [cluster.get(name).document] if name else [r.document for r in cluster.list()]
        sweeps = [] if name else [s.document for s in cluster.list_sweeps()]
        if output:
            document = items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items + sweeps}
            typer.echo(dump(document, output))
            return
        if sweeps:
            if items:
                typer.echo(table(EXPERIMENT_HEADERS, [experiment_row(item, now) for item in items]) + "\n")
            typer.echo(table(SWEEP_HEADERS, [sweep_row(item, now) for item in sweeps]))
            return
        if not items:
            typer.echo(f"No LaneExperiments found in namespace {cluster.namespace}.", err=True)
            return
        typer.echo(table(EXPERIMENT_HEADERS, [experiment_row(item, now) for item in items]))


def _watch_table(cluster: "lanex.Cluster", name: Optional[str]) -> None:
    """`lanex get -w`: the table, then follow the experiments through the API's watch until interrupted."""
    shown = WatchTable(EXPERIMENT_HEADERS, WATCH_WIDTHS)
    current: list[list[str]] = []
    try:
        for event in cluster.events(name):
            now = datetime.now(timezone.utc)
            if event.type == "SYNCED":
                for line in shown.start(current):
                    typer.echo(line)
                continue
            assert event.record is not None
            row = experiment_row(event.record.document, now)
            if event.type == "CURRENT":
                current.append(row)
                continue
            line = shown.change(row, deleted=event.type == "DELETED")
            if line is not None:
                typer.echo(line)
    except KeyboardInterrupt:
        pass


def describe_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
) -> None:
    """Spec summary, status (phase, conditions, children, snapshots, results, provenance, times) and Events.

    Exit codes: 0 shown, 1 not found or API error.
    """
    with reporting():
        cluster = connect(namespace)
        now = datetime.now(timezone.utc)
        found = cluster.find(name)
        if found is None:
            sweep = cluster.find_sweep(name)
            if sweep is not None:
                from lanex_operator.cli.sweep_views import sweep_describe_lines

                typer.echo("\n".join(sweep_describe_lines(cluster.kube, sweep.document, now)))
                return
        record = found or cluster.get(name)  # not found: the API's one-line error
        typer.echo("\n".join(describe_lines(cluster.kube, record.document, now)))


# --- logs ---------------------------------------------------------------------------------------


def logs_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Wait for the pod, then stream until it ends."),
    worker: Optional[int] = typer.Option(None, "--worker", min=0, help="Worker N's log instead of the launcher's."),
    prepare: bool = typer.Option(False, "--prepare", help="The download/prepare Job's log instead."),
    container: Optional[str] = typer.Option(None, "--container", "-c", help="Container (default: the main one)."),
) -> None:
    """The training launcher's log (mpirun/horovodrun output), a worker's, or the prepare Job's.

    When the API server has no log for the pod (kubelet gone, pod on a lost node) and the
    container has terminated, its termination message is shown instead (on a note to stderr).
    Exit codes: 0 shown, 1 no such pod or API error, 2 bad flags.
    """
    if prepare and worker is not None:
        fail("--prepare and --worker exclude each other", EXIT_USAGE)
    with reporting():
        cluster = connect(namespace)
        for text in cluster.logs(name, follow, worker=worker, prepare=prepare, container=container,
                                 on_note=lambda note: typer.echo(f"note: {note}", err=True)):
            sys.stdout.buffer.write(text.encode())
            sys.stdout.buffer.flush()


# --- wait ---------------------------------------------------------------------------------------


def wait_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    wait_for: str = typer.Option("succeeded", "--for", help="succeeded, failed or phase=X (e.g. phase=Training)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="Give up after S seconds (default: never)."),
) -> None:
    """Watch an experiment until it reaches a phase.

    Exit codes: 0 reached, 1 it cannot be reached any more (e.g. the experiment Failed: the reason and
    message are printed) or API error, 2 bad flags, 124 timed out.
    """
    with reporting():
        wanted = parse_wait_for(wait_for)
        cluster = connect(namespace)
        record = cluster.wait(name, wanted, timeout)
        phase = record.phase.value if record.phase else "-"
        typer.echo(f"laneexperiment {cluster.namespace}/{name}: {phase}{outcome(record.document)}")


# --- delete -------------------------------------------------------------------------------------


def stop_command(
    name: str = typer.Argument(..., help="Experiment name (on a cluster), or a local experiment or sweep."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    why: str = typer.Option("stopped on request", "--reason", help="Why: kept as the experiment's message."),
    workspace: Optional[Path] = typer.Option(None, "--workspace",
                                             help="Stop the `lanex run` of this local workspace instead (as Ctrl-C "
                                                  "would: the step is checkpointed; running the file again resumes)."),
) -> None:
    """End an experiment's training now. On a cluster the operator deletes its MPIJob and the experiment ends
    Stopped; locally the run checkpoints its step and ends. Exit codes: 0 asked, 1 not found, ended or not running."""
    import lanex

    if workspace is not None:
        try:
            typer.echo(lanex.Workspace(workspace).stop(name))
        except lanex.LocalRunError as error:
            fail(str(error))
        return
    with reporting():
        typer.echo(connect(namespace).stop(name, why))


def delete_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until the operator has applied retention and it is gone."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up after S seconds."),
    workspace: Optional[Path] = typer.Option(None, "--workspace",
                                             help="Delete a local experiment of this `lanex run` workspace instead "
                                                  "(not while it runs; its retention applies)."),
) -> None:
    """Delete an experiment (or a sweep, with its trials); the operator's finalizer applies retention first.

    Prints what retention keeps (dataset PVC, snapshots) and what goes with the experiment.
    Exit codes: 0 deleted (or deletion started), 1 not found or API error, 124 --wait timed out.
    """
    if workspace is not None:
        import lanex

        try:
            typer.echo(lanex.Workspace(workspace).delete(name))
        except lanex.LocalRunError as error:
            fail(str(error))
        return
    with reporting():
        cluster = connect(namespace)
        sweep = cluster.find(name) is None and cluster.find_sweep(name) is not None
        deletion = cluster.delete_sweep(name) if sweep else cluster.delete(name)
        ref = f"{'lanesweep' if sweep else 'laneexperiment'} {cluster.namespace}/{name}"
        typer.echo(f"{ref} deleted" + ("" if wait else " (the operator applies retention)"))
        if sweep:  # what goes first: the trials
            typer.echo("removes: " + "; ".join(deletion.removes))
            if deletion.keeps:
                typer.echo("keeps: " + "; ".join(deletion.keeps))
        else:
            typer.echo("keeps: " + ("; ".join(deletion.keeps) if deletion.keeps else "nothing"))
            typer.echo("removes: " + ("; ".join(deletion.removes) if deletion.removes else "nothing else"))
        if not wait:
            return
        gone = cluster.wait_gone(deletion, timeout)
        message = gone.operator_message
        typer.echo(f"{ref} is gone" + (f"; operator: {message}" if message else ""))


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the `lanex` app."""
    app.command("submit")(submit_command)
    app.command("get")(get_command)
    app.command("describe")(describe_command)
    app.command("logs")(logs_command)
    app.command("wait")(wait_command)
    app.command("stop")(stop_command)
    app.command("delete")(delete_command)
