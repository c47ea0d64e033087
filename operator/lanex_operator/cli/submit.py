"""What `lanex submit` sends: the file, with runai-style flags applied to its spec.

Why it exists: TR-4896's users drove training with `runai submit-mpi`; `lanex submit` takes the same
flags (`--processes`, `--gpu`, `--pvc`, `-e KEY=VAL`, `--large-shm`, `--project`) and maps them onto
the LaneExperiment (or LaneSweep template) file's spec, which the `lanex` API then validates with the
same models as the operator and the local runner. Every problem names the file, the field and, when
a flag set it, the flag. The API is imported inside the functions, so `lanex --help` stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

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
        from lanex_operator.api.documents import without_source

        dataset = without_source(result.get("dataset"))
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


def is_sweep_file(path: Path) -> bool:
    """Whether `path` holds a LaneSweep (unreadable files are left to the experiment's clear errors)."""
    from lanex_operator.api.files import ExperimentFileError, read_document
    from lanex_operator.api.sweep_files import document_kind

    try:
        return document_kind(read_document(path)) == "LaneSweep"
    except ExperimentFileError:
        return False


def submitted(file: Path, flags: SubmitOverrides, name: Optional[str],
              namespace: Optional[str]) -> tuple[Any, Optional[str], dict[str, str]]:
    """(the `lanex.Experiment` or `lanex.Sweep` to submit, the namespace its file asks for, spec path -> the
    flag that set it): the file with the flags applied (to a sweep's template) and `--name`. The file's
    problems name the file and field (InvalidSpecError), the flags' also the flag (UsageError)."""
    import lanex

    kind = lanex.Sweep if is_sweep_file(file) else lanex.Experiment
    resource = kind.from_file(file)  # ExperimentFileError (an InvalidSpecError) names file and field
    file_namespace = resource.namespace
    if namespace and file_namespace and namespace != file_namespace:
        raise UsageError(f"{file}: metadata.namespace is {file_namespace!r} but --namespace is {namespace!r}")
    document = resource.spec_document()
    if kind is lanex.Sweep:
        template, origin = apply_overrides(document.get("template") or {}, flags)
        document["template"] = template
        origin = {path.replace("spec.", "spec.template.", 1): flag for path, flag in origin.items()}
    else:
        document, origin = apply_overrides(document, flags)
    try:
        resource.spec = document
        if name is not None:
            resource.name = name
    except lanex.InvalidSpecError as error:
        raise UsageError("; ".join(f"{file}: {p}" for p in blame(error.problems, origin))) from None
    resource.namespace = None  # the namespace is the cluster's: --namespace, else the file's, else the context's
    return resource, file_namespace, origin
