"""`lanex submit|get|describe|logs|wait|delete` and `lanex snapshots ... --cluster`: LaneExperiments on Kubernetes.

Why it exists: TR-4896's users drove training with `runai submit-mpi` and `kubectl`; these commands
give the same convenience on top of the LaneExperiment CRD. This module holds only the typer
commands and their error plumbing: the experiment they submit is built in `submit`, what
they read and print in `views`. The Kubernetes client is imported only inside the
commands, so `lanex --help` stays fast.

Exit codes, the same for every command: 0 done, 1 API error or failed experiment, 2 invalid file or
flags or no Kubernetes configuration, 124 `wait` timed out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, List, NoReturn, Optional

import typer

from lanex_operator.cli import sweep_commands
from lanex_operator.cli.submit import (
    SubmitOverrides,
    UsageError,
    experiment_body,
    experiment_document,
    restore_spec,
    spec_conflict,
)
from lanex_operator.cli.views import (
    await_pod,
    container_of,
    deleted_event,
    EXPERIMENT_HEADERS,
    WATCH_WIDTHS,
    WatchTable,
    describe_lines,
    dump,
    experiment_row,
    find_pod,
    log_target,
    outcome,
    parse_wait_for,
    reached,
    retention_plan,
    snapshot_table,
    status_of,
    table,
    termination_message,
)

if TYPE_CHECKING:
    from lanex_operator.cli.cluster_client import Cluster

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

NAMESPACE_OPTION = typer.Option(None, "--namespace", "-n",
                                help="Namespace (default: the kubeconfig context's, else default).")


# --- plumbing shared by the commands -----------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def reporting() -> Iterator[None]:
    """Turn the errors of a command into one `error: ...` line and its exit code."""
    from lanex_operator.api import InvalidSpecError
    from lanex_operator.cli.cluster_client import ClusterError, NoClusterConfig, WaitTimeout

    try:
        yield
    except (UsageError, InvalidSpecError) as error:
        _fail(str(error), EXIT_USAGE)
    except NoClusterConfig as error:
        _fail(error.message, EXIT_USAGE)
    except WaitTimeout as error:
        _fail(error.message, EXIT_TIMEOUT)
    except ClusterError as error:
        _fail(error.message)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def connect(namespace: Optional[str]) -> "Cluster":
    from lanex_operator.cli.cluster_client import Cluster

    return Cluster.connect(namespace)


# --- submit ------------------------------------------------------------------------------------


def submit_command(
    experiment: Path = typer.Argument(..., help="LaneExperiment YAML file."),
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
    """Create a LaneExperiment from a file, with runai-style flags overriding it.

    An experiment that already exists with the same spec is left alone (exit 0); one with a
    different spec is refused (exit 1). Exit codes: 0 created or unchanged, 1 API error or
    conflict, 2 invalid file or flags.
    """
    from lanex_operator.api import parse_spec
    from lanex_operator.cli.cluster_client import ClusterError

    flags = SubmitOverrides(processes=processes, gpu=gpu, pvc=pvc, env=tuple(env), large_shm=large_shm,
                            project=project)
    with reporting():
        if sweep_commands.is_sweep_file(experiment):  # a LaneSweep: the flags change its template
            body, file_namespace = sweep_commands.sweep_body(experiment, flags, name, namespace)
            sweep_commands.submit_sweep(connect(namespace or file_namespace), body)
            return
        body, file_namespace = experiment_body(experiment, flags, name, namespace)
        cluster = connect(namespace or file_namespace)
        exp_name = body["metadata"]["name"]
        ref = cluster.experiment_ref(exp_name)
        spec = parse_spec(body["spec"])
        if spec.scheduler.type == "runai" and cluster.namespace != f"runai-{spec.scheduler.project}":
            typer.echo(f"note: RUN:ai runs project {spec.scheduler.project}'s jobs in namespace "
                       f"runai-{spec.scheduler.project}; this experiment goes to {cluster.namespace} (-n to change)",
                       err=True)
        try:
            cluster.create_experiment(body)
        except ClusterError as error:  # 409: compare with what is there
            if not error.already_exists:
                raise
            existing = cluster.get_experiment(exp_name)
            differ = spec_conflict(existing, spec)
            if differ:
                raise ClusterError(f"{ref} already exists with a different spec ({', '.join(differ[:5])}); delete "
                                   f"it (lanex delete {exp_name}) or submit with --name") from None
            typer.echo(f"{ref} already exists with the same spec (phase: {status_of(existing).get('phase') or '-'})")
            return
        typer.echo(f"{ref} created")


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
        _fail(f"--output {output}: must be json or yaml", EXIT_USAGE)
    if workspace is not None:
        from lanex_operator.cli.local_commands import get_local

        get_local(workspace, name, output, watch)
        return
    if watch and output:
        _fail("--watch shows the table; for objects use kubectl get lx -w -o json", EXIT_USAGE)
    with reporting():
        cluster = connect(namespace)
        if watch:
            _watch_table(cluster, name)
            return
        if name and sweep_commands.get_sweep_if_named(cluster, name, output):
            return
        items = [cluster.get_experiment(name)] if name else cluster.list_experiments()
        sweeps = [] if name else cluster.list_sweeps()
        if sweeps:
            sweep_commands.show_sweeps(cluster, items, sweeps, output)
            return
        if output:
            document = items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items}
            typer.echo(dump(document, output))
            return
        if not items:
            typer.echo(f"No LaneExperiments found in namespace {cluster.namespace}.", err=True)
            return
        now = datetime.now(timezone.utc)
        typer.echo(table(EXPERIMENT_HEADERS, [experiment_row(item, now) for item in items]))


def _watch_table(cluster: "Cluster", name: Optional[str]) -> None:
    """`lanex get -w`: the table, then follow the experiments through the API's watch until interrupted."""
    shown = WatchTable(EXPERIMENT_HEADERS, WATCH_WIDTHS)
    current: list[list[str]] = []

    def synced() -> None:
        for line in shown.start(current):
            typer.echo(line)

    try:
        for event, obj in cluster.watch_experiments(name, synced=synced):
            now = datetime.now(timezone.utc)
            if event == "CURRENT":
                current.append(experiment_row(obj, now))
                continue
            line = shown.change(experiment_row(obj, now), deleted=event == "DELETED")
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
        if sweep_commands.describe_sweep_if_named(cluster, name):
            return
        obj = cluster.get_experiment(name)
        typer.echo("\n".join(describe_lines(cluster, obj, datetime.now(timezone.utc))))


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
        _fail("--prepare and --worker exclude each other", EXIT_USAGE)
    with reporting():
        cluster = connect(namespace)
        obj = cluster.get_experiment(name)
        target = log_target(obj, cluster.namespace, worker, prepare)
        pod = await_pod(cluster, name, target) if follow else find_pod(cluster, target)
        if pod is None:
            phase = status_of(obj).get("phase") or "-"
            if phase in ("Succeeded", "Failed"):
                hint = " (cleanPodPolicy Running deletes workers when training ends)" if worker is not None else ""
                _fail(f"no {target.what}: the experiment is {phase}{hint}")
            _fail(f"no {target.what} yet (experiment phase: {phase}); use --follow to wait for it")
        assert pod is not None
        pod_name = pod["metadata"]["name"]
        chosen = container_of(pod, target.container, container)
        from lanex_operator.cli.cluster_client import ClusterError

        try:
            for chunk in cluster.pod_log(pod_name, chosen, follow):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        except ClusterError as error:
            fresh = cluster.get_pod(pod_name) or pod
            ended = termination_message(fresh, chosen)
            if ended is None:
                raise
            code, message = ended
            typer.echo(f"note: {error.message}; container {chosen} of pod {pod_name} exited with code {code}, "
                       f"its termination message follows", err=True)
            typer.echo(message)


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
    from lanex_operator.cli.cluster_client import WaitTimeout

    with reporting():
        wanted = parse_wait_for(wait_for)
        cluster = connect(namespace)
        ref = cluster.experiment_ref(name)
        phase = None
        try:
            for event, obj in cluster.watch_experiment(name, timeout):
                if event == "DELETED":
                    break
                status = status_of(obj)
                phase = status.get("phase")
                verdict = reached(phase, wanted)
                if verdict is True:
                    typer.echo(f"{ref}: {phase}{outcome(obj)}")
                    return
                if verdict is False:
                    detail = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
                    _fail(f"{ref} is {phase}, not {wanted}" + (f": {detail}" if detail else ""))
        except WaitTimeout as error:
            raise WaitTimeout(f"{error.message} to be {wanted} (phase: {phase or '-'})") from None
        _fail(f"{ref} was deleted while waiting")


# --- delete -------------------------------------------------------------------------------------


def delete_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until the operator has applied retention and it is gone."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up after S seconds."),
    workspace: Optional[Path] = typer.Option(None, "--workspace",
                                             help="Delete a local experiment of this `lanex run` workspace instead "
                                                  "(not while it runs; its retention applies)."),
) -> None:
    """Delete an experiment; the operator's finalizer applies its retention policy first.

    Prints what retention keeps (dataset PVC, snapshots) and what goes with the experiment.
    Exit codes: 0 deleted (or deletion started), 1 not found or API error, 124 --wait timed out.
    """
    from lanex_operator.controller.retention import snapshots_in_use

    if workspace is not None:
        from lanex_operator.local.actions import delete_local
        from lanex_operator.local.runner import LocalRunError

        try:
            typer.echo(delete_local(workspace, name))
        except LocalRunError as error:
            _fail(str(error))
        return

    with reporting():
        cluster = connect(namespace)
        if sweep_commands.delete_sweep_if_named(cluster, name, wait, timeout):
            return
        ref = cluster.experiment_ref(name)
        obj = cluster.get_experiment(name)
        snapshots = cluster.list_snapshots(name)
        in_use = snapshots_in_use(cluster.list_claims()) if snapshots else {}
        keeps, removes = retention_plan(obj, snapshots, in_use)
        cluster.delete_experiment(name)
        typer.echo(f"{ref} deleted" + ("" if wait else " (the operator applies retention)"))
        typer.echo("keeps: " + ("; ".join(keeps) if keeps else "nothing"))
        typer.echo("removes: " + ("; ".join(removes) if removes else "nothing else"))
        if not wait:
            return
        from lanex_operator.cli.cluster_client import ClusterError

        try:
            for event, _ in cluster.watch_experiment(name, timeout):
                if event == "DELETED":
                    break
        except ClusterError as error:
            if not error.not_found:
                raise
        message = deleted_event(cluster, obj)
        typer.echo(f"{ref} is gone" + (f"; operator: {message}" if message else ""))


# --- snapshots on the cluster (called by `lanex snapshots list|restore --cluster`) --------------


def snapshots_list_cluster(namespace: Optional[str], experiment: Optional[str]) -> None:
    """VolumeSnapshots of one experiment (label and status.snapshots) or of all lanex experiments."""
    with reporting():
        cluster = connect(namespace)
        found = {s["metadata"]["name"]: s for s in cluster.list_snapshots(experiment)}
        if experiment:
            obj = cluster.find_experiment(experiment)
            for record in status_of(obj or {}).get("snapshots") or []:
                if record.get("name") and record["name"] not in found:
                    snapshot = cluster.find_snapshot(record["name"])
                    if snapshot is not None:
                        found[record["name"]] = snapshot
        if not found:
            where = f"experiment {experiment}" if experiment else "lanex experiments"
            typer.echo(f"No VolumeSnapshots of {where} in namespace {cluster.namespace}.", err=True)
            return
        typer.echo(snapshot_table(list(found.values()), experiment))


def snapshots_restore_cluster(name: str, to: Optional[str], namespace: Optional[str],
                              storage_class: Optional[str], print_experiment: bool) -> None:
    """Restore a VolumeSnapshot into a new PVC (dataSource VolumeSnapshot), or print an experiment that does."""
    from lanex_operator.api import parse_spec
    from lanex_operator.api.files import load_experiment_document
    from lanex_operator.controller.builders import EXPERIMENT_LABEL, restore_pvc_for
    from lanex_operator.cli.cluster_client import ClusterError
    from lanex_operator.plan.steps import plan_for

    with reporting():
        cluster = connect(namespace)
        snapshot = cluster.get_snapshot(name)
        source, spec_doc = restore_spec(cluster, snapshot, storage_class)
        if print_experiment:
            exp_name = to or f"{source or 'experiment'}-restored"
            document = experiment_document({"name": exp_name, "namespace": cluster.namespace}, spec_doc)
            load_experiment_document(document, "the restore experiment (--to names it)")
            typer.echo(f"# A LaneExperiment whose dataset volume is restored from {name}; submit it with lanex submit.")
            typer.echo(dump(document, "yaml"))
            return
        if not to:
            raise UsageError("--to CLAIM is required (or --print-experiment)")
        status = status_of(snapshot)
        if not status.get("readyToUse"):
            error = (status.get("error") or {}).get("message")
            raise ClusterError(f"volumesnapshot {cluster.namespace}/{name} is not ready to use"
                               + (f": {error}" if error else " yet"))
        spec = parse_spec(spec_doc)
        plan_name = source or "restore"
        plan = plan_for(plan_name, cluster.namespace, spec)
        claim = restore_pvc_for({"name": plan_name, "namespace": cluster.namespace}, spec, plan,
                                restore_size=status.get("restoreSize"))
        # The new claim belongs to the user, not to the experiment: no experiment label, so neither the
        # operator nor retention ever treats it as a child.
        claim["metadata"]["name"] = to
        claim["metadata"]["labels"].pop(EXPERIMENT_LABEL, None)
        claim["metadata"]["labels"]["app.kubernetes.io/component"] = "restore"
        claim["metadata"]["annotations"]["lanex.dev/restored-from"] = name
        if source:
            claim["metadata"]["annotations"]["lanex.dev/source-experiment"] = source
        created = cluster.create_claim(claim)
        size = created["spec"]["resources"]["requests"]["storage"]
        typer.echo(f"persistentvolumeclaim {cluster.namespace}/{to} created from volumesnapshot {name} "
                   f"(storage class {created['spec'].get('storageClassName')}, size {size})")
        typer.echo(f"train on it with: lanex submit EXPERIMENT.yaml --pvc {to}", err=True)


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the `lanex` app."""
    app.command("submit")(submit_command)
    app.command("get")(get_command)
    app.command("describe")(describe_command)
    app.command("logs")(logs_command)
    app.command("wait")(wait_command)
    app.command("delete")(delete_command)
