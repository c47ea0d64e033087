"""`lanex render EXPERIMENT.yaml`: every object the operator would create for an experiment, in order.

Why it exists: it is the users' `helm template` for an experiment (review, GitOps diffs, air-gapped
approval) and the tests' window on the builders. The objects come from the same functions the
operator uses (`controller.desired`, on top of the pure builders), with the cluster's defaults in
effect as the operator reads them: its environment (`LANEX_TRAINER_IMAGE`, `LANEX_DEFAULT_*`), or the
chart's `defaults.*` from `--values`, else the built-in ones. What only the cluster knows is shown
as a placeholder: the experiment's uid in owner references, the snapshot's time
(`SNAPSHOT_TIME_PLACEHOLDER`), and for an `existingClaim` without a class in the spec the snapshot class
(the operator's rule picks the class of the claim's CSI driver: `snapshot_class_placeholder`); a restore
PVC asks for `dataset.size` (the operator raises it to the snapshot's restoreSize when that is larger). The MPIJob is the one for mpi-operator >= 0.5.0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import typer

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
# The chart's values (`defaults.*`) and the spec fields they fill (see charts/lanex-operator/values.yaml).
CHART_DEFAULTS = {
    "trainerImage": "trainer_image",
    "storageClassName": "storage_class_name",
    "volumeSnapshotClassName": "volume_snapshot_class_name",
    "scheduler": "scheduler",
}


class RenderError(ValueError):
    """A file, spec or values file that cannot be rendered (exit 2)."""


def cluster_defaults(values_file: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The operator's ClusterDefaults: the chart values' `defaults.*` when given, else its environment."""
    import dataclasses

    import yaml

    from lanex_operator.plan.defaults import ClusterDefaults

    try:
        defaults = ClusterDefaults.from_env(environ)
    except ValueError as error:
        raise RenderError(str(error)) from None
    if values_file is None:
        return defaults
    try:
        values = yaml.safe_load(values_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:  # one line: where, and what
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RenderError(f"{values_file}: invalid YAML{where}: {reason}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RenderError(f"{values_file}: cannot read chart values: {error}") from None
    chosen = (values.get("defaults") or {}) if isinstance(values, dict) else {}
    if not isinstance(chosen, dict):
        raise RenderError(f"{values_file}: defaults: must be a mapping")
    unknown = sorted(set(chosen) - set(CHART_DEFAULTS))
    if unknown:
        raise RenderError(f"{values_file}: defaults.{unknown[0]}: unknown value (known: {', '.join(CHART_DEFAULTS)})")
    try:
        return dataclasses.replace(defaults, **{CHART_DEFAULTS[key]: str(value) for key, value in chosen.items()
                                               if value not in (None, "")})
    except ValueError as error:
        raise RenderError(f"{values_file}: {error}") from None


def render_objects(metadata: Mapping[str, Any], spec: Any, namespace: Optional[str],
                   defaults: Any) -> list[dict[str, Any]]:
    """The operator's children of one validated experiment, in the order it creates them."""
    from lanex_operator.api.models import API_VERSION, KIND
    from lanex_operator.controller import desired
    from lanex_operator.plan.steps import SNAPSHOT_TIME_PLACEHOLDER, plan_for

    name = metadata["name"]
    namespace = namespace or metadata.get("namespace") or "default"
    plan = with_snapshot_class_shown(plan_for(name, namespace, spec, defaults=defaults))
    body_meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": PLACEHOLDER_UID, "generation": 1}
    if metadata.get("labels"):
        body_meta["labels"] = dict(metadata["labels"])
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body_meta}  # the builders read its metadata
    objects = []
    if plan.dataset.creates_claim:
        objects.append(desired.dataset_claim(body, spec, plan))
    if plan.prepare is not None:
        objects.append(desired.prepare_job(body, spec, plan))
    objects.append(desired.training_job(body, spec, plan))
    if plan.snapshot is not None:
        objects.append(desired.snapshot(body, spec, plan, SNAPSHOT_TIME_PLACEHOLDER))
    return objects


def snapshot_class_placeholder(claim: str) -> str:
    """What `lanex render` shows for a snapshot class that only the cluster can decide."""
    return f"<the VolumeSnapshotClass of the CSI driver of PersistentVolumeClaim {claim}, chosen on the cluster>"


def with_snapshot_class_shown(plan: Any) -> Any:
    """The plan with the snapshot class the operator would use, by the operator's rule
    (`controller.preflight.chooses_class_by_driver`): for a claim lanex did not create and no class in the
    spec, the class of the bound volume's CSI driver, which only the cluster knows: a placeholder, like the uid."""
    import dataclasses

    from lanex_operator.controller.preflight import chooses_class_by_driver

    if plan.snapshot is None or not chooses_class_by_driver(plan):
        return plan
    shown = snapshot_class_placeholder(plan.snapshot.source_claim)
    return dataclasses.replace(plan, snapshot=dataclasses.replace(plan.snapshot, volume_snapshot_class_name=shown))


def render_file(path: Path, namespace: Optional[str] = None, values_file: Optional[Path] = None,
                environ: Optional[Mapping[str, str]] = None) -> list[dict[str, Any]]:
    """Read, validate and render one experiment file; RenderError (or InvalidSpecError) when it cannot be."""
    from lanex_operator.api.files import ExperimentFileError, load_experiment_document, read_document
    from lanex_operator.api.sweep import SWEEP_KIND
    from lanex_operator.api.sweep_files import document_kind

    document = read_document(path)
    if document_kind(document) == SWEEP_KIND:  # its trials' objects depend on the sweep's progress
        raise ExperimentFileError(f"{path}: kind LaneSweep: `lanex render` renders a LaneExperiment; a sweep's "
                                  "trials are LaneExperiments made by the operator (`lanex submit` it instead)")
    metadata, spec = load_experiment_document(document, str(path))  # the same checks and messages as `lanex run`
    return render_objects(metadata, spec, namespace, cluster_defaults(values_file, environ))


def format_objects(objects: list[dict[str, Any]], output: str, source: str) -> str:
    """YAML documents (each after a `# Source:` line, like `helm template`) or one JSON v1 List."""
    import yaml

    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n"
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # shared label dicts are written out, not as &anchors
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> Any:  # scripts read as scripts: `|` blocks
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    parts = []
    for obj in objects:
        header = f"# Source: {source} -> {obj['kind']} {obj['metadata']['name']}\n"
        parts.append("---\n" + header + yaml.dump(obj, Dumper=Dumper, sort_keys=False, width=120, allow_unicode=True))
    return "".join(parts)


def render_command(
    experiment: Path = typer.Argument(..., help="LaneExperiment YAML file."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n",
                                            help="Namespace (default: the file's metadata.namespace, else default)."),
    output: str = typer.Option("yaml", "--output", "-o", help="yaml or json."),
    values: Optional[Path] = typer.Option(None, "--values", "-f",
                                          help="The chart's values file: its defaults.* are the cluster defaults "
                                               "(default: LANEX_TRAINER_IMAGE, LANEX_DEFAULT_* or the built-in ones)."),
) -> None:
    """Print every object the operator would create for EXPERIMENT, in order (no cluster needed)."""
    from lanex_operator.api.models import InvalidSpecError

    if output not in ("yaml", "json"):
        typer.echo(f"error: -o {output}: expected yaml or json", err=True)
        raise typer.Exit(2)
    try:
        objects = render_file(experiment, namespace, values)
    except (InvalidSpecError, RenderError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(format_objects(objects, output, str(experiment)), nl=False)


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
