"""`lanex submit|get|describe|logs|wait|delete` and `lanex snapshots ... --cluster`: LaneExperiments on Kubernetes.

Why it exists: TR-4896's users drove training with `runai submit-mpi` and `kubectl`; these commands
give the same convenience on top of the LaneExperiment CRD, with the experiment file validated by
the same models as the operator and the local runner. `submit` takes runai-style flags
(`--processes`, `--gpu`, `--pvc`, `-e KEY=VAL`, `--large-shm`, `--project`) that override the file.
The Kubernetes client is imported only inside the commands, so `lanex --help` stays fast.

Exit codes, the same for every command: 0 done, 1 API error or failed experiment, 2 invalid file or
flags, 124 `wait` timed out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional

import typer

if TYPE_CHECKING:
    from lanex_operator.cluster import Cluster

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

NAMESPACE_OPTION = typer.Option(None, "--namespace", "-n",
                                help="Namespace (default: the kubeconfig context's, else default).")

# TR-4896's environment variables that have typed fields: `-e BATCH_SIZE=16` sets training.batchSize.
TYPED_ENV: dict[str, tuple[tuple[str, ...], type]] = {
    "BATCH_SIZE": (("training", "batchSize"), int),
    "NUM_WORKERS": (("training", "loaderWorkers"), int),
    "USE_WORKERS": (("training", "useWorkers"), bool),
    "USE_VAL": (("training", "validation", "enabled"), bool),
    "VAL_BATCH_SIZE": (("training", "validation", "batchSize"), int),
    "ENABLE_SNAPSHOT": (("snapshot", "enabled"), bool),
}
DERIVED_ENV = {"PVC_NAME": "use --pvc CLAIM", "RUNAI_MPI_NUM_WORKERS": "it is --processes times --gpu"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class UsageError(ValueError):
    """Invalid flags or file: one `error:` line listing every problem, exit code 2."""


# --- submit: runai-style flags onto the spec (pure) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubmitOverrides:
    """The flags of `lanex submit` that change the experiment file's spec."""

    processes: Optional[int] = None
    gpu: Optional[int] = None
    pvc: Optional[str] = None
    env: tuple[str, ...] = ()
    large_shm: Optional[bool] = None
    project: Optional[str] = None


def _set(spec: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _typed(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise UsageError(f"-e {name}={text}: must be true or false")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"-e {name}={text}: must be an integer") from None


def _claim_of(pvc: str) -> str:
    # runai's `--pvc CLAIM:/mnt`; lanex always mounts the dataset volume at /mnt.
    claim, _, mount = pvc.partition(":")
    if not claim or (mount and mount.rstrip("/") != "/mnt"):
        raise UsageError(f"--pvc {pvc}: expected CLAIM or CLAIM:/mnt (lanex mounts the dataset volume at /mnt)")
    return claim


def apply_overrides(spec: Mapping[str, Any], flags: SubmitOverrides) -> tuple[dict[str, Any], dict[str, str]]:
    """(the spec with the flags applied, spec path -> the flag that set it) for error messages."""
    result = copy.deepcopy(dict(spec))
    origin: dict[str, str] = {}

    def put(path: Sequence[str], value: Any, flag: str) -> None:
        _set(result, path, value)
        origin["spec." + ".".join(path)] = flag

    if flags.processes is not None:
        put(("training", "workers"), flags.processes, "--processes")
    if flags.gpu is not None:
        put(("training", "gpusPerWorker"), flags.gpu, "--gpu")
    if flags.large_shm is not None:
        put(("training", "largeShm"), flags.large_shm, "--large-shm")
    if flags.project is not None:
        put(("scheduler",), {"type": "runai", "project": flags.project}, "--project")
    if flags.pvc is not None:
        dataset = {key: value for key, value in (result.get("dataset") or {}).items()
                   if key not in ("download", "synthetic", "existingClaim", "fromSnapshot")}
        dataset["existingClaim"] = {"claimName": _claim_of(flags.pvc)}
        put(("dataset",), dataset, "--pvc")
    extra: list[dict[str, str]] = list((result.get("training") or {}).get("env") or [])
    for item in flags.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-e {item}: expected KEY=VALUE")
        if name in DERIVED_ENV:
            raise UsageError(f"-e {name}: set by lanex ({DERIVED_ENV[name]})")
        if name in TYPED_ENV:
            path, kind = TYPED_ENV[name]
            put(path, _typed(name, value, kind), f"-e {name}")
            continue
        extra = [entry for entry in extra if entry.get("name") != name] + [{"name": name, "value": value}]
        origin["spec.training.env"] = "-e"
    if flags.env and extra != list((result.get("training") or {}).get("env") or []):
        _set(result, ("training", "env"), extra)
    return result, origin


def blame(problems: Sequence[str], origin: Mapping[str, str]) -> list[str]:
    """Append `(from --flag)` to each problem about a field a flag set."""
    blamed = []
    for problem in problems:
        path = problem.split(":", 1)[0]
        flag = next((flag for prefix, flag in origin.items() if path == prefix or path.startswith(prefix + ".")
                     or path.startswith(prefix + "[")), None)
        blamed.append(f"{problem} (from {flag})" if flag else problem)
    return blamed


def experiment_body(file: Path, flags: SubmitOverrides, name: Optional[str],
                    namespace: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(the LaneExperiment to create, the namespace the file asks for); raises UsageError naming file and field."""
    from lanex_operator.api import InvalidSpecError, load_experiment_file, parse_spec, validate_against_crd
    from lanex_operator.api.models import check_experiment_name

    metadata, spec = load_experiment_file(file)  # ExperimentFileError (an InvalidSpecError) names file and field
    document = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    merged, origin = apply_overrides(document, flags)
    try:
        final = parse_spec(merged)
        if name is not None:
            check_experiment_name(name)
    except InvalidSpecError as error:
        raise UsageError("; ".join(f"{file}: {p}" for p in blame(error.problems, origin))) from None
    file_namespace = metadata.get("namespace")
    if namespace and file_namespace and namespace != file_namespace:
        raise UsageError(f"{file}: metadata.namespace is {file_namespace!r} but --namespace is {namespace!r}")
    meta = {key: value for key, value in metadata.items() if key in ("name", "labels", "annotations")}
    if name is not None:
        meta["name"] = name
    body = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": meta,
            "spec": final.model_dump(mode="json", by_alias=True, exclude_unset=True)}
    problems = validate_against_crd(body)
    if problems:
        raise UsageError("; ".join(f"{file}: {p}" for p in blame(problems, origin)))
    return body, file_namespace


def spec_differences(first: Any, second: Any, path: str = "spec") -> list[str]:
    """Dotted paths where two (defaulted) specs differ."""
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        found: list[str] = []
        for key in sorted(set(first) | set(second)):
            found += spec_differences(first.get(key), second.get(key), f"{path}.{key}")
        return found
    return [] if first == second else [path]


def spec_conflict(existing: Mapping[str, Any], spec: Any) -> list[str]:
    """Paths where the cluster's experiment differs from `spec`, defaults included (empty: the same)."""
    from lanex_operator.api import InvalidSpecError, parse_spec

    try:
        theirs = parse_spec(existing.get("spec") or {})
    except InvalidSpecError:
        return ["spec"]
    return spec_differences(theirs.model_dump(mode="json", by_alias=True), spec.model_dump(mode="json", by_alias=True))


# --- small formatting helpers -------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by three spaces, like kubectl."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["   ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines)


def parse_time(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's AGE: 45s, 3m12s, 47m, 5h3m, 30h, 3d4h, 40d, 3y."""
    seconds = max(0, int(seconds))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


def age(timestamp: Optional[str], now: Optional[datetime] = None) -> str:
    moment = parse_time(timestamp)
    if moment is None:
        return "-"
    return human_duration(((now or datetime.now(timezone.utc)) - moment).total_seconds())


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _workers(obj: Mapping[str, Any]) -> str:
    from lanex_operator.api import InvalidSpecError, parse_spec

    try:
        return str(parse_spec(obj.get("spec") or {}).training.workers)
    except InvalidSpecError:
        return str(((obj.get("spec") or {}).get("training") or {}).get("workers", "?"))


def experiment_row(obj: Mapping[str, Any], now: Optional[datetime] = None) -> list[str]:
    status = _status(obj)
    return [obj["metadata"]["name"], status.get("phase") or "-", _workers(obj),
            _number((status.get("results") or {}).get("accuracy")),
            (status.get("provenance") or {}).get("resultSnapshot") or "-",
            age(obj["metadata"].get("creationTimestamp"), now)]


def dump(obj: Any, output: str) -> str:
    import yaml

    if output == "json":
        return json.dumps(obj, indent=2)
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip("\n")


# --- plumbing shared by the commands -----------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def reporting() -> Iterator[None]:
    """Turn the errors of a command into one `error: ...` line and its exit code."""
    from lanex_operator.api import InvalidSpecError
    from lanex_operator.cluster import ClusterError, WaitTimeout

    try:
        yield
    except (UsageError, InvalidSpecError) as error:
        _fail(str(error), EXIT_USAGE)
    except WaitTimeout as error:
        _fail(error.message, EXIT_TIMEOUT)
    except ClusterError as error:
        _fail(error.message)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def connect(namespace: Optional[str]) -> "Cluster":
    from lanex_operator.cluster import Cluster

    return Cluster.connect(namespace)


def _children(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Child names from status, else the deterministic names of the plan (before the operator wrote them)."""
    from lanex_operator.api import InvalidSpecError, parse_spec
    from lanex_operator.plan import child_names

    recorded = dict(_status(obj).get("children") or {})
    try:
        names = child_names(obj["metadata"]["name"], parse_spec(obj.get("spec") or {}))
        planned = {"datasetClaim": names.dataset_claim, "prepareJob": names.prepare_job, "mpiJob": names.mpijob}
    except InvalidSpecError:
        planned = {}
    return {**planned, **{key: value for key, value in recorded.items() if value}}


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
    from lanex_operator.cluster import ClusterError

    flags = SubmitOverrides(processes=processes, gpu=gpu, pvc=pvc, env=tuple(env), large_shm=large_shm,
                            project=project)
    with reporting():
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
            typer.echo(f"{ref} already exists with the same spec (phase: {_status(existing).get('phase') or '-'})")
            return
        typer.echo(f"{ref} created")


# --- get, describe ------------------------------------------------------------------------------


def get_command(
    name: Optional[str] = typer.Argument(None, help="Experiment name (default: all in the namespace)."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="json or yaml (default: a table)."),
) -> None:
    """List LaneExperiments like `kubectl get lx`: NAME, PHASE, WORKERS, ACCURACY, SNAPSHOT, AGE.

    Exit codes: 0 shown, 1 not found or API error, 2 bad --output.
    """
    if output not in (None, "json", "yaml"):
        _fail(f"--output {output}: must be json or yaml", EXIT_USAGE)
    with reporting():
        cluster = connect(namespace)
        items = [cluster.get_experiment(name)] if name else cluster.list_experiments()
        if output:
            document = items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items}
            typer.echo(dump(document, output))
            return
        if not items:
            typer.echo(f"No LaneExperiments found in namespace {cluster.namespace}.", err=True)
            return
        now = datetime.now(timezone.utc)
        typer.echo(table(("NAME", "PHASE", "WORKERS", "ACCURACY", "SNAPSHOT", "AGE"),
                         [experiment_row(item, now) for item in items]))


def _spec_lines(spec_doc: Mapping[str, Any]) -> list[str]:
    from lanex_operator.api import InvalidSpecError, parse_spec

    try:
        spec = parse_spec(spec_doc)
    except InvalidSpecError as error:
        return [f"  (invalid: {error})"]
    t, d = spec.training, spec.dataset
    gpus = f"{t.gpus_per_worker} GPU(s)" if t.gpus_per_worker else "CPU"
    scheduler = f"runai, project {spec.scheduler.project}" if spec.scheduler.type == "runai" else "kubeflow (default)"
    snap = spec.snapshot
    snapshot = (f"enabled (class {snap.volume_snapshot_class_name}, onFailure {str(snap.on_failure).lower()})"
                if snap.enabled else "disabled")
    validation = f"on, batch {t.validation.batch_size}" if t.validation.enabled else "off"
    lines = [
        f"  Dataset:     {d.source_description()} (storage class {d.storage_class_name}, size {d.size})",
        f"  Training:    {t.backend}, {t.backbone}, {t.workers} worker(s) x {gpus} = {t.processes()} process(es), "
        f"{t.epochs} epoch(s), lr {t.learning_rate:g}, {t.height}x{t.width}",
        f"  Batch:       {t.batch_size} per process, loader workers {t.loader_workers} (useWorkers "
        f"{str(t.use_workers).lower()}), validation {validation}, "
        f"large shm {str(t.large_shm).lower()}",
        f"  Image:       {t.image}",
        f"  Scheduler:   {scheduler}",
        f"  Snapshot:    {snapshot}",
        f"  Retention:   dataset {spec.retention.dataset}, snapshots {spec.retention.snapshots}",
    ]
    if t.env:
        lines.append("  Env:         " + ", ".join(f"{e.name}={e.value}" for e in t.env))
    return lines


def _child_state(kind: str, obj: Optional[Mapping[str, Any]]) -> str:
    if obj is None:
        return "not found"
    status = _status(obj)
    if kind == "PersistentVolumeClaim":
        return status.get("phase") or "Pending"
    true = [c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"]
    return true[-1] if true else ("Active" if status.get("active") else "Created")


def _events_for(cluster: "Cluster", involved: set[tuple[str, str]]) -> list[dict[str, Any]]:
    events = [e for e in cluster.list_events()
              if ((e.get("involvedObject") or {}).get("kind"), (e.get("involvedObject") or {}).get("name")) in involved]

    def when(event: Mapping[str, Any]) -> tuple[str, int]:
        stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""
        version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
        return stamp, int(version) if version.isdigit() else 0

    return sorted(events, key=when)


def _section(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return [f"{title}:", "  <none>"]
    return [f"{title}:", *("  " + line for line in table(headers, rows).splitlines())]


def _fields(title: str, values: Mapping[str, Any], labels: Sequence[tuple[str, str]]) -> list[str]:
    lines = [f"  {label + ':':13}{values[key]}" for key, label in labels if values.get(key) not in (None, "")]
    return [f"{title}:", *lines] if lines else []


def _condition_rows(status: Mapping[str, Any]) -> list[list[str]]:
    return [[c.get("type", ""), c.get("status", ""), c.get("reason") or "-", c.get("lastTransitionTime") or "-",
             c.get("message") or ""] for c in status.get("conditions") or []]


def _snapshot_names(status: Mapping[str, Any]) -> list[str]:
    recorded = [r["name"] for r in status.get("snapshots") or [] if r.get("name")]
    return list(dict.fromkeys([*((status.get("children") or {}).get("snapshots") or []), *recorded]))


def _child_rows(cluster: "Cluster", obj: Mapping[str, Any]) -> list[list[str]]:
    """KIND, NAME, STATE of each child: read from the cluster, snapshots from status.snapshots."""
    status, names = _status(obj), _children(obj)
    recorded = status.get("children") or {}
    rows = []
    if names.get("datasetClaim"):
        rows.append(["PersistentVolumeClaim", names["datasetClaim"],
                     _child_state("PersistentVolumeClaim", cluster.get_claim(names["datasetClaim"]))])
    for kind, key, read in (("Job", "prepareJob", cluster.get_job), ("MPIJob", "mpiJob", cluster.get_mpijob)):
        if names.get(key):
            child = read(names[key])
            if child is not None or recorded.get(key):  # planned but not (yet) created: not a child
                rows.append([kind, names[key], _child_state(kind, child)])
    records = {r.get("name"): r for r in status.get("snapshots") or []}
    for snap in _snapshot_names(status):
        record = records.get(snap, {})
        state = (f"readyToUse {str(bool(record.get('readyToUse'))).lower()}, restoreSize "
                 f"{record.get('restoreSize') or '-'}, created {record.get('creationTime') or '-'}")
        if (record.get("error") or {}).get("message"):
            state += f", error: {record['error']['message']}"
        rows.append(["VolumeSnapshot", snap, state])
    return rows


def _event_rows(cluster: "Cluster", obj: Mapping[str, Any], now: datetime) -> list[list[str]]:
    """Events about the experiment or one of its children, oldest first."""
    names = _children(obj)
    involved = {("LaneExperiment", obj["metadata"]["name"])}
    for kind, key in (("PersistentVolumeClaim", "datasetClaim"), ("Job", "prepareJob"), ("MPIJob", "mpiJob")):
        if names.get(key):
            involved.add((kind, names[key]))
    involved |= {("VolumeSnapshot", snap) for snap in _snapshot_names(_status(obj))}
    rows = []
    for event in _events_for(cluster, involved):
        about = event.get("involvedObject") or {}
        rows.append([age(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp"), now),
                     event.get("type", ""), event.get("reason", ""), f"{about.get('kind')}/{about.get('name')}",
                     (event.get("message") or "").replace("\n", " ")])
    return rows


def _time_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    lines = ["Times:", f"  Started:     {status.get('startTime') or '-'}",
             f"  Completed:   {status.get('completionTime') or '-'}"]
    if start is not None:
        lines.append(f"  Duration:    {human_duration(((end or now) - start).total_seconds())}"
                     + ("" if end else " (running)"))
    return lines


def describe_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
) -> None:
    """Spec summary, status (phase, conditions, children, snapshots, results, provenance, times) and Events.

    Exit codes: 0 shown, 1 not found or API error.
    """
    with reporting():
        cluster = connect(namespace)
        obj = cluster.get_experiment(name)
        meta, status = obj["metadata"], _status(obj)
        now = datetime.now(timezone.utc)
        created = meta.get("creationTimestamp")
        out = [f"Name:          {meta['name']}", f"Namespace:     {meta.get('namespace', cluster.namespace)}",
               f"Created:       {created or '-'} ({age(created, now)} ago)",
               f"Phase:         {status.get('phase') or '-'}"]
        out += [f"{label + ':':15}{status[key]}" for key, label in (("reason", "Reason"), ("message", "Message"))
                if status.get(key)]
        out += ["Spec:", *_spec_lines(obj.get("spec") or {})]
        out += _section("Conditions", ("TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"),
                        _condition_rows(status))
        out += _section("Children", ("KIND", "NAME", "STATE"), _child_rows(cluster, obj))
        results = status.get("results") or {}
        out += _fields("Results", {**results, **{k: _number(results.get(k)) for k in ("accuracy", "fp", "fn")
                                                 if results.get(k) is not None}},
                       (("accuracy", "Accuracy"), ("fp", "FP rate"), ("fn", "FN rate"), ("imagesPerSecond", "Images/s"),
                        ("epochs", "Epochs"), ("checkpoint", "Checkpoint")))
        out += _fields("Provenance", status.get("provenance") or {},
                       (("trainerImage", "Image"), ("configHash", "Config hash"), ("datasetSource", "Data source"),
                        ("resultSnapshot", "Snapshot")))
        out += _time_lines(status, now)
        out += _section("Events", ("AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"), _event_rows(cluster, obj, now))
        typer.echo("\n".join(out))


# --- logs ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogTarget:
    """Which pod's log to show: found by labels, else by the name its controller gives it."""

    what: str  # e.g. "launcher of mpijob default/foo-train"
    selector: str
    name_prefix: str
    exact_name: Optional[str]
    container: str


def log_target(obj: Mapping[str, Any], namespace: str, worker: Optional[int], prepare: bool) -> LogTarget:
    from lanex_operator.cluster import JOB_NAME_LABELS, MPI_INDEX_LABEL, MPI_JOB_NAME_LABEL, MPI_ROLE_LABEL

    names = _children(obj)
    if prepare:
        job = names.get("prepareJob") or f"{obj['metadata']['name']}-prepare"
        return LogTarget(f"pod of job {namespace}/{job}", f"{JOB_NAME_LABELS[0]}={job}", f"{job}-", None, "prepare")
    mpijob = names.get("mpiJob") or f"{obj['metadata']['name']}-train"
    if worker is not None:
        return LogTarget(f"worker {worker} of mpijob {namespace}/{mpijob}",
                         f"{MPI_JOB_NAME_LABEL}={mpijob},{MPI_ROLE_LABEL}=worker,{MPI_INDEX_LABEL}={worker}",
                         f"{mpijob}-worker-", f"{mpijob}-worker-{worker}", "worker")
    return LogTarget(f"launcher of mpijob {namespace}/{mpijob}",
                     f"{MPI_JOB_NAME_LABEL}={mpijob},{MPI_ROLE_LABEL}=launcher", f"{mpijob}-launcher-", None,
                     "launcher")


def pick_pod(pods: Sequence[Mapping[str, Any]], target: LogTarget, by_label: bool) -> Optional[dict[str, Any]]:
    """The newest pod of the target (a restarted launcher leaves older pods behind)."""
    def matches(pod: Mapping[str, Any]) -> bool:
        pod_name = pod["metadata"]["name"]
        if target.exact_name is not None:
            return pod_name == target.exact_name
        return pod_name.startswith(target.name_prefix) and (by_label or "-" not in pod_name[len(target.name_prefix):])

    chosen = [dict(p) for p in pods if by_label or matches(p)]
    chosen.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return chosen[-1] if chosen else None


def _container_of(pod: Mapping[str, Any], preferred: str, requested: Optional[str]) -> str:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if requested:
        return requested
    return preferred if preferred in names or not names else str(names[0])


def termination_message(pod: Mapping[str, Any], container: str) -> Optional[tuple[int, str]]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            for key in ("state", "lastState"):
                terminated = (status.get(key) or {}).get("terminated")
                if terminated:
                    return int(terminated.get("exitCode", 0)), str(terminated.get("message") or "")
    return None


def _find_pod(cluster: "Cluster", target: LogTarget) -> Optional[dict[str, Any]]:
    pod = pick_pod(cluster.list_pods(target.selector), target, by_label=True)
    return pod if pod is not None else pick_pod(cluster.list_pods(), target, by_label=False)


def _await_pod(cluster: "Cluster", name: str, target: LogTarget) -> dict[str, Any]:
    """With --follow: wait (by watching) until the target's pod exists and has left Pending."""
    from lanex_operator.cluster import ClusterError
    from lanex_operator.status import TERMINAL_PHASES

    while True:
        pod = _find_pod(cluster, target)
        if pod is not None and (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            return pod
        if pod is None and _status(cluster.get_experiment(name)).get("phase") in TERMINAL_PHASES:
            raise ClusterError(f"no {target.what}: the experiment has finished")
        for seen in cluster.watch_pods(target.selector, timeout=30):
            if (seen.get("status") or {}).get("phase") not in (None, "Pending"):
                return seen


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
        pod = _await_pod(cluster, name, target) if follow else _find_pod(cluster, target)
        if pod is None:
            phase = _status(obj).get("phase") or "-"
            if phase in ("Succeeded", "Failed"):
                hint = " (cleanPodPolicy Running deletes workers when training ends)" if worker is not None else ""
                _fail(f"no {target.what}: the experiment is {phase}{hint}")
            _fail(f"no {target.what} yet (experiment phase: {phase}); use --follow to wait for it")
        assert pod is not None
        pod_name = pod["metadata"]["name"]
        chosen = _container_of(pod, target.container, container)
        from lanex_operator.cluster import ClusterError

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


def parse_wait_for(text: str) -> str:
    """`succeeded`, `failed` or `phase=X` -> the phase to wait for."""
    from lanex_operator.api import Phase

    lowered = text.strip().lower()
    if lowered in ("succeeded", "failed"):
        return lowered.capitalize()
    if lowered.startswith("phase="):
        wanted = text.split("=", 1)[1].strip()
        for phase in Phase:
            if phase.value.lower() == wanted.lower():
                return phase.value
    phases = ", ".join(p.value for p in Phase)
    raise UsageError(f"--for {text}: expected succeeded, failed or phase=X with X one of {phases}")


def reached(phase: Optional[str], wanted: str) -> Optional[bool]:
    """True when `phase` is `wanted` (or past it on the way to Succeeded), False when it never will be, else None."""
    from lanex_operator.api import Phase

    lifecycle = [p.value for p in Phase if p is not Phase.FAILED]  # the enum lists phases in lifecycle order
    if phase == wanted:
        return True
    if phase in ("Succeeded", "Failed"):
        if wanted in lifecycle and phase == "Succeeded":
            return True  # a non-terminal phase it went through
        return False
    if phase in lifecycle and wanted in lifecycle[:-1] and lifecycle.index(phase) > lifecycle.index(wanted):
        return True
    return None


def _outcome(obj: Mapping[str, Any]) -> str:
    status = _status(obj)
    parts = []
    results = status.get("results") or {}
    if results.get("accuracy") is not None:
        parts.append(f"accuracy {_number(results['accuracy'])}")
    snapshot = (status.get("provenance") or {}).get("resultSnapshot")
    if snapshot:
        parts.append(f"snapshot {snapshot}")
    return f" ({', '.join(parts)})" if parts else ""


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
    from lanex_operator.cluster import WaitTimeout

    with reporting():
        wanted = parse_wait_for(wait_for)
        cluster = connect(namespace)
        ref = cluster.experiment_ref(name)
        phase = None
        try:
            for event, obj in cluster.watch_experiment(name, timeout):
                if event == "DELETED":
                    break
                status = _status(obj)
                phase = status.get("phase")
                verdict = reached(phase, wanted)
                if verdict is True:
                    typer.echo(f"{ref}: {phase}{_outcome(obj)}")
                    return
                if verdict is False:
                    detail = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
                    _fail(f"{ref} is {phase}, not {wanted}" + (f": {detail}" if detail else ""))
        except WaitTimeout as error:
            raise WaitTimeout(f"{error.message} to be {wanted} (phase: {phase or '-'})") from None
        _fail(f"{ref} was deleted while waiting")


# --- delete -------------------------------------------------------------------------------------


def retention_plan(obj: Mapping[str, Any], snapshots: Sequence[Mapping[str, Any]],
                   in_use: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(what deleting the experiment keeps, what it removes), from its spec, children and the
    snapshots that a PVC restores from (`in_use`: snapshot -> claim), as `retention.release` decides."""
    from lanex_operator.retention import retention_of

    dataset_policy, snapshot_policy, created_claim = retention_of(obj, None)
    names = _children(obj)
    keeps, removes = [], []
    claim = names.get("datasetClaim")
    if claim and not created_claim:
        keeps.append(f"PersistentVolumeClaim {claim} (your existing claim)")
    elif claim and (_status(obj).get("children") or {}).get("datasetClaim"):
        target = removes if dataset_policy == "Delete" else keeps
        target.append(f"PersistentVolumeClaim {claim} (retention.dataset: {dataset_policy})")
    for snapshot in snapshots:
        snap = snapshot["metadata"]["name"]
        if snapshot_policy == "Delete" and snap in in_use:
            keeps.append(f"VolumeSnapshot {snap} (dataSource of PersistentVolumeClaim {in_use[snap]})")
        else:
            target = removes if snapshot_policy == "Delete" else keeps
            target.append(f"VolumeSnapshot {snap} (retention.snapshots: {snapshot_policy})")
    for kind, key in (("Job", "prepareJob"), ("MPIJob", "mpiJob")):
        if (_status(obj).get("children") or {}).get(key):
            removes.append(f"{kind} {names[key]}")
    return keeps, removes


def _deleted_event(cluster: "Cluster", obj: Mapping[str, Any], patience: float = 3.0) -> Optional[str]:
    """The operator's `Deleted` Event about this experiment: what its finalizer actually did."""
    import time

    uid, name = obj["metadata"].get("uid"), obj["metadata"]["name"]
    deadline = time.monotonic() + patience
    while True:
        for event in cluster.list_events():
            involved = event.get("involvedObject") or {}
            same = involved.get("uid") == uid if involved.get("uid") else involved.get("name") == name
            if involved.get("kind") == "LaneExperiment" and event.get("reason") == "Deleted" and same:
                return str(event.get("message") or "")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)  # Events are posted asynchronously, just before the finalizer goes


def delete_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: Optional[str] = NAMESPACE_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until the operator has applied retention and it is gone."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up after S seconds."),
) -> None:
    """Delete an experiment; the operator's finalizer applies its retention policy first.

    Prints what retention keeps (dataset PVC, snapshots) and what goes with the experiment.
    Exit codes: 0 deleted (or deletion started), 1 not found or API error, 124 --wait timed out.
    """
    from lanex_operator.retention import snapshots_in_use

    with reporting():
        cluster = connect(namespace)
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
        from lanex_operator.cluster import ClusterError

        try:
            for event, _ in cluster.watch_experiment(name, timeout):
                if event == "DELETED":
                    break
        except ClusterError as error:
            if not error.not_found:
                raise
        message = _deleted_event(cluster, obj)
        typer.echo(f"{ref} is gone" + (f"; operator: {message}" if message else ""))


# --- snapshots on the cluster (called by `lanex snapshots list|restore --cluster`) --------------


def snapshots_list_cluster(namespace: Optional[str], experiment: Optional[str]) -> None:
    """VolumeSnapshots of one experiment (label and status.snapshots) or of all lanex experiments."""
    with reporting():
        cluster = connect(namespace)
        found = {s["metadata"]["name"]: s for s in cluster.list_snapshots(experiment)}
        if experiment:
            obj = cluster.find_experiment(experiment)
            for record in _status(obj or {}).get("snapshots") or []:
                if record.get("name") and record["name"] not in found:
                    snapshot = cluster.find_snapshot(record["name"])
                    if snapshot is not None:
                        found[record["name"]] = snapshot
        if not found:
            where = f"experiment {experiment}" if experiment else "lanex experiments"
            typer.echo(f"No VolumeSnapshots of {where} in namespace {cluster.namespace}.", err=True)
            return
        rows = []
        ordered = sorted(found.values(), key=lambda s: (_status(s).get("creationTime") or "", s["metadata"]["name"]))
        for snapshot in ordered:
            status, labels = _status(snapshot), snapshot["metadata"].get("labels") or {}
            error = (status.get("error") or {}).get("message")
            rows.append([snapshot["metadata"]["name"], labels.get("lanex.dev/experiment", experiment or "-"),
                         str(bool(status.get("readyToUse"))).lower(), status.get("restoreSize") or "-",
                         status.get("creationTime") or "-",
                         ((snapshot.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName") or "-",
                         error or ""])
        typer.echo(table(("NAME", "EXPERIMENT", "READYTOUSE", "RESTORESIZE", "CREATIONTIME", "SOURCEPVC", "ERROR"),
                         rows))


def _restore_spec(cluster: "Cluster", snapshot: Mapping[str, Any],
                  storage_class: Optional[str]) -> tuple[str, dict[str, Any]]:
    """(source experiment name or "", the spec of an experiment whose dataset restores `snapshot`)."""
    from lanex_operator.api import InvalidSpecError, parse_spec

    name = snapshot["metadata"]["name"]
    source = (snapshot["metadata"].get("labels") or {}).get("lanex.dev/experiment") or ""
    experiment = cluster.find_experiment(source) if source else None
    spec: dict[str, Any] = {}
    if experiment is not None:
        try:
            spec = parse_spec(experiment.get("spec") or {}).model_dump(mode="json", by_alias=True, exclude_unset=True)
        except InvalidSpecError:
            spec = {}
    dataset = {key: value for key, value in (spec.get("dataset") or {}).items()
               if key not in ("download", "synthetic", "existingClaim", "fromSnapshot", "prepareBackoffLimit")}
    dataset["fromSnapshot"] = {"snapshotName": name}
    if storage_class:
        dataset["storageClassName"] = storage_class
    elif "storageClassName" not in dataset:
        claim_name = ((snapshot.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
        claim = cluster.get_claim(claim_name) if claim_name else None
        klass = ((claim or {}).get("spec") or {}).get("storageClassName")
        if not klass:
            raise UsageError(f"cannot tell the storage class for a restore of volumesnapshot "
                             f"{cluster.namespace}/{name} (its experiment and source PVC are gone): "
                             f"pass --storage-class")
        dataset["storageClassName"] = klass
    spec["dataset"] = dataset
    return source, spec


def snapshots_restore_cluster(name: str, to: Optional[str], namespace: Optional[str],
                              storage_class: Optional[str], print_experiment: bool) -> None:
    """Restore a VolumeSnapshot into a new PVC (dataSource VolumeSnapshot), or print an experiment that does."""
    from lanex_operator.api import parse_spec
    from lanex_operator.api.files import load_experiment_document
    from lanex_operator.builders import EXPERIMENT_LABEL, restore_pvc_for
    from lanex_operator.cluster import ClusterError
    from lanex_operator.plan import plan_for

    with reporting():
        cluster = connect(namespace)
        snapshot = cluster.get_snapshot(name)
        source, spec_doc = _restore_spec(cluster, snapshot, storage_class)
        if print_experiment:
            exp_name = to or f"{source or 'experiment'}-restored"
            document = {"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment",
                        "metadata": {"name": exp_name, "namespace": cluster.namespace}, "spec": spec_doc}
            load_experiment_document(document, "the restore experiment (--to names it)")
            typer.echo(f"# A LaneExperiment whose dataset volume is restored from {name}; submit it with lanex submit.")
            typer.echo(dump(document, "yaml"))
            return
        if not to:
            raise UsageError("--to CLAIM is required (or --print-experiment)")
        status = _status(snapshot)
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
