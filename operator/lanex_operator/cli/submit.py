"""The experiment that `lanex submit` (and `lanex snapshots restore --cluster`) sends: file, flags, spec.

Why it exists: TR-4896's users drove training with `runai submit-mpi`; `lanex submit` takes the same
flags (`--processes`, `--gpu`, `--pvc`, `-e KEY=VAL`, `--large-shm`, `--project`) and maps them onto
the LaneExperiment file's spec, then validates the result with the same models as the operator and
the local runner. Every problem names the file, the field and, when a flag set it, the flag.
Everything here is pure but `restore_spec`, which reads the cluster; the API models are imported
inside the functions, so `lanex --help` stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from lanex_operator.api import LaneExperimentSpec
    from lanex_operator.cli.cluster_client import Cluster

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
# The dataset fields that say where the data comes from: a new source replaces all of them.
DATASET_SOURCES = ("download", "synthetic", "existingClaim", "fromSnapshot")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class UsageError(ValueError):
    """Invalid flags or file: one `error:` line listing every problem, exit code 2."""


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


def _without_source(dataset: Optional[Mapping[str, Any]], *also: str) -> dict[str, Any]:
    """The dataset fields that stay when its source is replaced (and those in `also` dropped too)."""
    return {key: value for key, value in (dataset or {}).items() if key not in DATASET_SOURCES + also}


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
        dataset = _without_source(result.get("dataset"))
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


def spec_document(spec: "LaneExperimentSpec", defaults: bool = False) -> dict[str, Any]:
    """The spec as the API serves it: camelCase, only the fields set unless `defaults`."""
    return spec.model_dump(mode="json", by_alias=True, exclude_unset=not defaults)


def experiment_document(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """A LaneExperiment object, as created on the cluster or written to a file."""
    from lanex_operator.api import API_VERSION, KIND

    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": dict(metadata), "spec": dict(spec)}


def parsed_spec(obj: Mapping[str, Any]) -> Optional["LaneExperimentSpec"]:
    """The validated spec of a LaneExperiment read from the cluster, None when it is invalid."""
    from lanex_operator.api import InvalidSpecError, parse_spec

    try:
        return parse_spec(obj.get("spec") or {})
    except InvalidSpecError:
        return None


def experiment_body(file: Path, flags: SubmitOverrides, name: Optional[str],
                    namespace: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(the LaneExperiment to create, the namespace the file asks for); raises UsageError naming file and field."""
    from lanex_operator.api import InvalidSpecError, load_experiment_file, parse_spec, validate_against_crd
    from lanex_operator.api.models import check_experiment_name

    metadata, spec = load_experiment_file(file)  # ExperimentFileError (an InvalidSpecError) names file and field
    merged, origin = apply_overrides(spec_document(spec), flags)
    try:
        final = parse_spec(merged)
        if name is not None:
            check_experiment_name(name)
    except InvalidSpecError as error:
        raise UsageError("; ".join(f"{file}: {p}" for p in blame(error.problems, origin))) from None
    meta, file_namespace = submitted_metadata(file, metadata, namespace, name)
    body = experiment_document(meta, spec_document(final))
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


def spec_conflict(existing: Mapping[str, Any], spec: "LaneExperimentSpec") -> list[str]:
    """Paths where the cluster's experiment differs from `spec`, defaults included (empty: the same)."""
    theirs = parsed_spec(existing)
    if theirs is None:
        return ["spec"]
    return spec_differences(spec_document(theirs, defaults=True), spec_document(spec, defaults=True))


def restore_spec(cluster: "Cluster", snapshot: Mapping[str, Any],
                 storage_class: Optional[str]) -> tuple[str, dict[str, Any]]:
    """(source experiment name or "", the spec of an experiment whose dataset restores `snapshot`).

    The source experiment's spec is kept but for its data source; the storage class is the flag's,
    else the source experiment's, else that of the claim the snapshot was taken of.
    """
    name = snapshot["metadata"]["name"]
    source = (snapshot["metadata"].get("labels") or {}).get("lanex.dev/experiment") or ""
    experiment = cluster.find_experiment(source) if source else None
    parsed = parsed_spec(experiment) if experiment is not None else None
    spec = spec_document(parsed) if parsed is not None else {}
    dataset = _without_source(spec.get("dataset"), "prepareBackoffLimit")
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


def submitted_metadata(file: Any, metadata: dict[str, Any], namespace: Optional[str],
                       name: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """The metadata a submitted object keeps (name, labels, annotations; `--name` wins) and the file's
    namespace, which must agree with `--namespace` when both are given."""
    file_namespace = metadata.get("namespace")
    if namespace and file_namespace and namespace != file_namespace:
        raise UsageError(f"{file}: metadata.namespace is {file_namespace!r} but --namespace is {namespace!r}")
    meta = {key: value for key, value in metadata.items() if key in ("name", "labels", "annotations")}
    if name is not None:
        meta["name"] = name
    return meta, file_namespace
