"""The LaneSweep side of `lanex submit|get|describe|delete` (issue 14), hooked into the experiment commands.

Why it exists: the commands keep one name each (`lanex get NAME` finds an experiment, else a sweep
of that name), so the sweep's variants live here and `cluster_commands` calls them with one line
each. Errors go through the same `reporting()` plumbing, with the same exit codes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from lanex_operator.cli.submit import SubmitOverrides, UsageError, apply_overrides, submitted_metadata

if TYPE_CHECKING:
    from lanex_operator.cli.cluster_client import Cluster


def is_sweep_file(path: Path) -> bool:
    """Whether `path` holds a LaneSweep (unreadable files are left to the experiment's clear errors)."""
    from lanex_operator.api.files import ExperimentFileError, read_document
    from lanex_operator.api.sweep_files import document_kind

    try:
        return document_kind(read_document(path)) == "LaneSweep"
    except ExperimentFileError:
        return False


def sweep_body(file: Path, flags: SubmitOverrides, name: Optional[str],
               namespace: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(the LaneSweep to create, the namespace the file asks for); flags change the template's spec."""
    from lanex_operator.api import API_VERSION, InvalidSpecError
    from lanex_operator.api.sweep import SWEEP_KIND, check_sweep_name, parse_sweep_spec
    from lanex_operator.api.sweep_crd import validate_sweep_against_crd
    from lanex_operator.api.sweep_files import load_sweep_file

    metadata, spec = load_sweep_file(file)
    document = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    template, _ = apply_overrides(document.get("template") or {}, flags)
    document["template"] = template
    try:
        final = parse_sweep_spec(document)
        if name is not None:
            check_sweep_name(name)
    except InvalidSpecError as error:
        raise UsageError("; ".join(f"{file}: {p}" for p in error.problems)) from None
    meta, file_namespace = submitted_metadata(file, metadata, namespace, name)
    body = {"apiVersion": API_VERSION, "kind": SWEEP_KIND, "metadata": meta,
            "spec": final.model_dump(mode="json", by_alias=True, exclude_unset=True)}
    problems = validate_sweep_against_crd(body)
    if problems:
        raise UsageError("; ".join(f"{file}: {p}" for p in problems))
    return body, file_namespace


def submit_sweep(cluster: "Cluster", body: dict[str, Any]) -> None:
    """Create the sweep; one that exists with the same spec is left alone, a different one refused."""
    from lanex_operator.api import InvalidSpecError
    from lanex_operator.api.sweep import parse_sweep_spec
    from lanex_operator.cli.cluster_client import ClusterError

    name = body["metadata"]["name"]
    ref = cluster.sweep_ref(name)
    try:
        cluster.create_sweep(body)
    except ClusterError as error:
        if not error.already_exists:
            raise
        existing = cluster.get_sweep(name)
        try:
            same = parse_sweep_spec(existing.get("spec") or {}) == parse_sweep_spec(body["spec"])
        except InvalidSpecError:
            same = False
        if not same:
            raise ClusterError(f"{ref} already exists with a different spec; delete it (lanex delete {name}) or "
                               f"submit with --name") from None
        typer.echo(f"{ref} already exists with the same spec (phase: {(existing.get('status') or {}).get('phase') or '-'})")
        return
    typer.echo(f"{ref} created")


def show_sweeps(cluster: "Cluster", experiments: list[dict[str, Any]], sweeps: list[dict[str, Any]],
                output: Optional[str]) -> None:
    """`lanex get` when the namespace has sweeps: both lists (one List document with -o, else two tables)."""
    from lanex_operator.cli.sweep_views import SWEEP_HEADERS, sweep_row
    from lanex_operator.cli.views import EXPERIMENT_HEADERS, dump, experiment_row, table

    if output:
        typer.echo(dump({"apiVersion": "v1", "kind": "List", "items": experiments + sweeps}, output))
        return
    now = datetime.now(timezone.utc)
    if experiments:
        typer.echo(table(EXPERIMENT_HEADERS, [experiment_row(item, now) for item in experiments]) + "\n")
    typer.echo(table(SWEEP_HEADERS, [sweep_row(item, now) for item in sweeps]))


def get_sweep_if_named(cluster: "Cluster", name: str, output: Optional[str]) -> bool:
    """`lanex get NAME` for a sweep (True when NAME is a sweep and not an experiment)."""
    from lanex_operator.cli.sweep_views import SWEEP_HEADERS, sweep_row
    from lanex_operator.cli.views import dump, table

    sweep = _sweep_not_experiment(cluster, name)
    if sweep is None:
        return False
    if output:
        typer.echo(dump(sweep, output))
    else:
        typer.echo(table(SWEEP_HEADERS, [sweep_row(sweep, datetime.now(timezone.utc))]))
    return True


def describe_sweep_if_named(cluster: "Cluster", name: str) -> bool:
    from lanex_operator.cli.sweep_views import sweep_describe_lines

    sweep = _sweep_not_experiment(cluster, name)
    if sweep is None:
        return False
    typer.echo("\n".join(sweep_describe_lines(cluster, sweep, datetime.now(timezone.utc))))
    return True


def delete_sweep_if_named(cluster: "Cluster", name: str, wait: bool, timeout: Optional[float]) -> bool:
    """`lanex delete NAME` for a sweep: its trials go with it (owner references), the dataset per retention."""
    from lanex_operator.cli.cluster_client import WaitTimeout

    sweep = _sweep_not_experiment(cluster, name)
    if sweep is None:
        return False
    spec, status = sweep.get("spec") or {}, sweep.get("status") or {}
    policy = (spec.get("retention") or {}).get("dataset", "Retain")
    trials = cluster.list_trials(name)
    ref = cluster.sweep_ref(name)
    cluster.delete_sweep(name)
    typer.echo(f"{ref} deleted" + ("" if wait else " (the operator applies retention)"))
    typer.echo(f"removes: {len(trials)} trial(s) (each applies its own retention)"
               + (f", dataset PersistentVolumeClaim {status['datasetClaim']} and VolumeSnapshot "
                  f"{status.get('datasetSnapshot')}" if policy == "Delete" and status.get("datasetClaim") else ""))
    if policy != "Delete":
        typer.echo(f"keeps: the dataset ({status.get('datasetSnapshot') or 'not prepared yet'}; retention.dataset: "
                   f"Retain)")
    if not wait:
        return True
    deadline = None if timeout is None else time.monotonic() + timeout
    while cluster.find_sweep(name) is not None:
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {ref} to be gone")
        time.sleep(0.5)
    typer.echo(f"{ref} is gone")
    return True


def _sweep_not_experiment(cluster: "Cluster", name: str) -> Optional[dict[str, Any]]:
    if cluster.find_experiment(name) is not None:
        return None
    return cluster.find_sweep(name)
