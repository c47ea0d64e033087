"""How the cluster commands show a LaneExperiment and its children.

Why it exists: `lanex get|describe|wait` and `lanex snapshots list --cluster` present the operator's
objects the way `kubectl` users expect (aligned tables, kubectl's AGE, describe sections, Events
oldest first). What they show comes from the `lanex` Python API (`lanex.Cluster`); the commands in
`cluster_commands` only wire the two. The API models are imported inside the functions, so
`lanex --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from lanex_operator.cli.submit import UsageError

if TYPE_CHECKING:
    from lanex.cluster import ClusterClient as Cluster

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


def _units(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}{minor}{minor_unit}" if minor else f"{major}{major_unit}"


def human_duration(seconds: float) -> str:
    """kubectl's AGE: 45s, 3m12s, 47m, 5h3m, 30h, 3d4h, 40d, 3y."""
    seconds = max(0, int(seconds))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    # (below this many seconds: major value and unit, minor value and unit shown when not 0), as kubectl rounds
    steps = ((120, seconds, "s", 0, ""), (10 * 60, minutes, "m", seconds % 60, "s"), (180 * 60, minutes, "m", 0, ""),
             (8 * 3600, hours, "h", minutes % 60, "m"), (48 * 3600, hours, "h", 0, ""),
             (8 * 86400, days, "d", hours % 24, "h"), (730 * 86400, days, "d", 0, ""))
    for limit, major, major_unit, minor, minor_unit in steps:
        if seconds < limit:
            return _units(major, major_unit, minor, minor_unit)
    return f"{days // 365}y"


def age(timestamp: Optional[str], now: Optional[datetime] = None) -> str:
    moment = parse_time(timestamp)
    if moment is None:
        return "-"
    return human_duration(((now or datetime.now(timezone.utc)) - moment).total_seconds())


def decimal(value: Any, digits: int = 4) -> str:
    """A metric with fixed digits, "-" when absent."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def status_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def dump(obj: Any, output: str) -> str:
    import yaml

    if output == "json":
        return json.dumps(obj, indent=2)
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip("\n")


# --- get -----------------------------------------------------------------------------------------


def _workers(obj: Mapping[str, Any]) -> str:
    from lanex_operator.api.documents import parsed_spec

    spec = parsed_spec(obj)
    if spec is not None:
        return str(spec.training.workers)
    return str(((obj.get("spec") or {}).get("training") or {}).get("workers", "?"))


EXPERIMENT_HEADERS = ("NAME", "PHASE", "PROGRESS", "ETA", "WORKERS", "ACCURACY", "SNAPSHOT", "AGE")
# -w prints rows one at a time: room for the longest phase, "30/30 100%" and "12h05m" from the start.
WATCH_WIDTHS = (16, len("ProvisioningDataset"), len("30/30 100%"), len("12h05m"))


def experiment_row(obj: Mapping[str, Any], now: Optional[datetime] = None) -> list[str]:
    """One `lanex get` row; PROGRESS and ETA are the operator's, the same as `kubectl get lx` shows."""
    status = status_of(obj)
    return [obj["metadata"]["name"], status.get("phase") or "-", status.get("progressSummary") or "-",
            status.get("eta") or "-", _workers(obj),
            decimal((status.get("results") or {}).get("accuracy")),
            (status.get("provenance") or {}).get("resultSnapshot") or "-",
            age(obj["metadata"].get("creationTimestamp"), now)]


class WatchTable:
    """`lanex get -w`: the table, then one row per change of an experiment (AGE alone is no change),
    aligned to the widest cell seen so far."""

    def __init__(self, headers: Sequence[str], widths: Sequence[int] = ()) -> None:
        self.widths = [max(len(header), int(width)) for header, width in
                       zip(headers, [*widths, *([0] * (len(headers) - len(widths)))])]
        self.headers = list(headers)
        self._last: dict[str, list[str]] = {}

    def _line(self, row: Sequence[str]) -> str:
        self.widths = [max(width, len(cell)) for width, cell in zip(self.widths, row)]
        return "   ".join(cell.ljust(width) for cell, width in zip(row, self.widths)).rstrip()

    def start(self, rows: Sequence[Sequence[str]]) -> list[str]:
        for row in rows:
            self.widths = [max(width, len(cell)) for width, cell in zip(self.widths, row)]
            self._last[row[0]] = list(row)
        return [self._line(self.headers), *(self._line(row) for row in rows)]

    def change(self, row: Sequence[str], deleted: bool = False) -> Optional[str]:
        """The line to print for an experiment's new state, or None when nothing shown changed."""
        previous = self._last.pop(row[0], None) if deleted else self._last.get(row[0])
        if not deleted:
            if previous is not None and previous[:-1] == list(row[:-1]):
                return None
            self._last[row[0]] = list(row)
        return self._line(row)


def progress_lines(status: Mapping[str, Any], now: Optional[datetime] = None) -> list[str]:
    """`lanex describe`'s Progress section, from `status.progress` (the trainer's newest record)."""
    progress = status.get("progress")
    if not isinstance(progress, Mapping):
        return []

    def number(key: str, digits: int) -> Optional[str]:
        value = progress.get(key)
        return None if value is None else f"{float(value):.{digits}f}"

    lines = [f"  State:       {progress.get('state', '-')} ({status.get('progressSummary') or '-'}, "
             f"epoch {progress.get('epoch', '-')}/{progress.get('epochs', '-')}, "
             f"step {progress.get('step', '-')}/{progress.get('steps', '-')})",
             f"  ETA:         {status.get('eta') or '-'}"]
    values = {"Loss": number("loss", 4), "LR": number("learningRate", 6), "Images/s": number("imagesPerSecond", 1)}
    wait = progress.get("dataWaitFraction")
    if wait is not None:
        values["Data wait"] = f"{100 * float(wait):.0f}% of step time"
    lines += [f"  {label + ':':13}{value}" for label, value in values.items() if value is not None]
    validation = progress.get("validation")
    if isinstance(validation, Mapping):
        lines.append(f"  Validation:  epoch {validation.get('epoch')}: accuracy {decimal(validation.get('accuracy'))}, "
                     f"FP {decimal(validation.get('fp'))}, FN {decimal(validation.get('fn'))}")
    history = [v for v in progress.get("validationHistory") or [] if isinstance(v, Mapping)]
    if len(history) > 1:
        lines.append("  Accuracy:    " + " ".join(decimal(v.get("accuracy"), 3) for v in history)
                     + " (by epoch)")
    gpus = [g for g in progress.get("gpus") or [] if isinstance(g, Mapping)]
    if gpus:
        lines.append("  GPUs:        " + ", ".join(
            f"rank {g.get('rank')} {float(g.get('utilizationPercent') or 0):.0f}%"
            + (f" {int(g['memoryUsedBytes']) / 2**30:.1f}/{int(g['memoryTotalBytes']) / 2**30:.1f} GiB"
               if g.get("memoryUsedBytes") is not None and g.get("memoryTotalBytes") is not None else "")
            for g in gpus))
    seen = progress.get("observedAt")
    lines.append(f"  Updated:     {progress.get('updatedAt') or '-'} (read {seen or '-'}"
                 + (f", {age(seen, now)} ago)" if seen else ")"))
    return ["Progress:", *lines]


# --- describe ------------------------------------------------------------------------------------


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
        f"{f'{t.iterations} iteration(s)' if t.iterations else f'{t.epochs} epoch(s)'}, lr {t.learning_rate:g}, "
        f"{t.height}x{t.width}",
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
    status = status_of(obj)
    if kind == "PersistentVolumeClaim":
        return status.get("phase") or "Pending"
    true = [c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"]
    return true[-1] if true else ("Active" if status.get("active") else "Created")


def _event_time(event: Mapping[str, Any]) -> Optional[str]:
    return event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")


def _events_for(cluster: "Cluster", involved: set[tuple[str, str]]) -> list[dict[str, Any]]:
    events = [e for e in cluster.list_events()
              if ((e.get("involvedObject") or {}).get("kind"), (e.get("involvedObject") or {}).get("name")) in involved]

    def when(event: Mapping[str, Any]) -> tuple[str, int]:
        version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
        return _event_time(event) or "", int(version) if version.isdigit() else 0

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
    from lanex_operator.plan.objects import DATASET_CHILD, WORKLOAD_CHILDREN, children_of, recorded_children

    status, names, recorded = status_of(obj), children_of(obj), recorded_children(obj)
    rows = []
    kind, key = DATASET_CHILD
    if names.get(key):
        rows.append([kind, names[key], _child_state(kind, cluster.get_claim(names[key]))])
    readers = {"Job": cluster.get_job, "MPIJob": cluster.get_mpijob}
    for kind, key in WORKLOAD_CHILDREN:
        if names.get(key):
            child = readers[kind](names[key])
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
    from lanex_operator.plan.objects import DATASET_CHILD, WORKLOAD_CHILDREN, children_of

    names = children_of(obj)
    involved = {("LaneExperiment", obj["metadata"]["name"])}
    involved |= {(kind, names[key]) for kind, key in (DATASET_CHILD, *WORKLOAD_CHILDREN) if names.get(key)}
    involved |= {("VolumeSnapshot", snap) for snap in _snapshot_names(status_of(obj))}
    rows = []
    for event in _events_for(cluster, involved):
        about = event.get("involvedObject") or {}
        rows.append([age(_event_time(event), now), event.get("type", ""), event.get("reason", ""),
                     f"{about.get('kind')}/{about.get('name')}", (event.get("message") or "").replace("\n", " ")])
    return rows


def picture_paths(obj: Mapping[str, Any]) -> dict[str, str]:
    """Where the trainer put the pictures of a trained experiment (on its dataset volume, and so in
    its result snapshot): loss/accuracy curves, the worst test images, per-image overlays."""
    from lanex_operator.plan.steps import experiment_paths

    if not (status_of(obj).get("results") or {}):
        return {}
    output_dir = experiment_paths(obj["metadata"]["name"]).output_dir
    return {"curves": f"{output_dir}/curves.png", "worst": f"{output_dir}/worst.png",
            "overlays": f"{output_dir}/overlays/"}


def _time_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    lines = ["Times:", f"  Started:     {status.get('startTime') or '-'}",
             f"  Completed:   {status.get('completionTime') or '-'}"]
    if start is not None:
        lines.append(f"  Duration:    {human_duration(((end or now) - start).total_seconds())}"
                     + ("" if end else " (running)"))
    return lines


def describe_lines(cluster: "Cluster", obj: Mapping[str, Any], now: datetime) -> list[str]:
    """`lanex describe`: spec summary, status (phase, conditions, children, results, provenance, times), Events."""
    meta, status = obj["metadata"], status_of(obj)
    created = meta.get("creationTimestamp")
    out = [f"Name:          {meta['name']}", f"Namespace:     {meta.get('namespace', cluster.namespace)}",
           f"Created:       {created or '-'} ({age(created, now)} ago)",
           f"Phase:         {status.get('phase') or '-'}"]
    out += [f"{label + ':':15}{status[key]}" for key, label in (("reason", "Reason"), ("message", "Message"))
            if status.get(key)]
    out += ["Spec:", *_spec_lines(obj.get("spec") or {})]
    out += _section("Conditions", ("TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"), _condition_rows(status))
    out += _section("Children", ("KIND", "NAME", "STATE"), _child_rows(cluster, obj))
    out += progress_lines(status, now)
    results = status.get("results") or {}
    out += _fields("Results", {**results, **{k: decimal(results.get(k)) for k in ("accuracy", "fp", "fn")
                                             if results.get(k) is not None}},
                   (("accuracy", "Accuracy"), ("fp", "FP rate"), ("fn", "FN rate"), ("imagesPerSecond", "Images/s"),
                    ("epochs", "Epochs"), ("checkpoint", "Checkpoint")))
    out += _fields("Pictures (dataset volume)", picture_paths(obj),
                   (("curves", "Curves"), ("worst", "Worst tests"), ("overlays", "Overlays")))
    out += _fields("Provenance", status.get("provenance") or {},
                   (("trainerImage", "Image"), ("configHash", "Config hash"), ("datasetSource", "Data source"),
                    ("resultSnapshot", "Snapshot")))
    out += _time_lines(status, now)
    out += _section("Events", ("AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"), _event_rows(cluster, obj, now))
    return out


# --- snapshots list --cluster ----------------------------------------------------------------------


def snapshot_table(snapshots: Sequence[Mapping[str, Any]], experiment: Optional[str]) -> str:
    """VolumeSnapshots oldest first, with the experiment that took them and their readiness."""
    rows = []
    ordered = sorted(snapshots, key=lambda s: (status_of(s).get("creationTime") or "", s["metadata"]["name"]))
    for snapshot in ordered:
        status, labels = status_of(snapshot), snapshot["metadata"].get("labels") or {}
        error = (status.get("error") or {}).get("message")
        rows.append([snapshot["metadata"]["name"], labels.get("lanex.dev/experiment", experiment or "-"),
                     str(bool(status.get("readyToUse"))).lower(), status.get("restoreSize") or "-",
                     status.get("creationTime") or "-",
                     ((snapshot.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName") or "-",
                     error or ""])
    return table(("NAME", "EXPERIMENT", "READYTOUSE", "RESTORESIZE", "CREATIONTIME", "SOURCEPVC", "ERROR"), rows)


# --- wait: which phase ----------------------------------------------------------------------------


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


def outcome(obj: Mapping[str, Any]) -> str:
    """` (accuracy 0.9512, snapshot NAME)` after a reached phase, or "" when there is neither."""
    status = status_of(obj)
    parts = []
    results = status.get("results") or {}
    if results.get("accuracy") is not None:
        parts.append(f"accuracy {decimal(results['accuracy'])}")
    snapshot = (status.get("provenance") or {}).get("resultSnapshot")
    if snapshot:
        parts.append(f"snapshot {snapshot}")
    return f" ({', '.join(parts)})" if parts else ""
