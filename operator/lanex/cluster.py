"""`lanex.Cluster`: LaneExperiments and LaneSweeps on Kubernetes, from Python.

Why it exists: a notebook submits, follows and compares runs on a cluster the way `lanex submit|get|
wait|logs|delete` do, and those commands are a thin layer over this class: one implementation.
It talks to the API server through `lanex_operator.client` (the official synchronous `kubernetes`
client, imported when a Cluster is built) in one namespace; every failure is a one-line
`ClusterError`. `watch` and `wait` follow the API server's watch (no polling), and every wait is
bounded by its `timeout`.
"""

from __future__ import annotations

import codecs
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Union

from lanex.errors import ClusterError, InvalidSpecError, NotReached, WaitTimeout
from lanex.records import (
    ClusterSnapshot,
    ComparedRun,
    Deletion,
    ExperimentRecord,
    RunResults,
    SweepRecord,
    WatchEvent,
)
from lanex.specs import Experiment, Sweep
from lanex_operator.api.documents import experiment_document, spec_conflict
from lanex_operator.api.status import Phase, phase_reached
from lanex_operator.api.sweep import TRIAL_PARAMETERS_ANNOTATION, SweepPhase, TrialRecord, parse_sweep_spec
from lanex_operator.client.cluster import ClusterClient
from lanex_operator.client.pods import await_pod, container_of, find_pod, log_target, termination_message

log = logging.getLogger("lanex")

SWEEP_LIFECYCLE = tuple(p.value for p in SweepPhase if p is not SweepPhase.FAILED)
SWEEP_ENDS = (SweepPhase.SUCCEEDED.value, SweepPhase.FAILED.value)
SWEEP_GONE_POLL_S = 0.5  # a sweep's deletion is followed by reading it (its trials go first, by owner references)


@dataclass(frozen=True)
class Submitted:
    """What `Cluster.submit` did: `created`, or found the same spec already there (`created` False)."""

    record: Union[ExperimentRecord, SweepRecord]
    created: bool


def _wanted(phase: Union[str, Phase, SweepPhase], phases: Sequence[str]) -> str:
    """The phase asked for, spelled as the API spells it (case does not matter)."""
    text = phase.value if isinstance(phase, (Phase, SweepPhase)) else str(phase)
    for known in phases:
        if known.lower() == text.strip().lower():
            return known
    raise InvalidSpecError(f"phase: {text!r} is not one of {', '.join(phases)}")


def _changed(record: ExperimentRecord) -> tuple[Any, ...]:
    """What `watch` reports a change of: phase, reason, progress (a new step, epoch or validation), results."""
    progress = record.progress.advance_key() if record.progress is not None else None
    return (record.phase, record.reason, record.message, progress, record.results, record.snapshot)


class Cluster:
    """One namespace of a Kubernetes cluster with the lanex operator, as `kubectl` would log in.

    `kubeconfig`: the file (default: KUBECONFIG, else ~/.kube/config, else the pod's service account);
    `context`: one of its contexts (default: the current one); `namespace`: default the context's,
    else `default`. Raises `NoClusterConfig` when there is nothing to log in with.
    """

    def __init__(self, kubeconfig: Optional[str] = None, context: Optional[str] = None,
                 namespace: Optional[str] = None) -> None:
        self.kube = ClusterClient.connect(namespace, context, str(kubeconfig) if kubeconfig else None)
        """The underlying client (plain dicts as the API serves them), for reads this class has no method for."""

    @classmethod
    def on(cls, client: ClusterClient) -> "Cluster":
        """A Cluster over a client already connected (the dashboard's, in the namespace of the object at hand)."""
        cluster = cls.__new__(cls)
        cluster.kube = client
        return cluster

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def __repr__(self) -> str:
        return f"Cluster(server={self.kube.server!r}, namespace={self.namespace!r})"

    # ---- submit

    def submit(self, resource: Union[Experiment, Sweep]) -> Submitted:
        """Create the experiment (or sweep) in this namespace.

        One that already exists with the same spec is left alone (`created` False); one with another
        spec raises ClusterError naming the fields that differ. The document is checked against the
        CRD's schema first (InvalidSpecError naming the field, before any request).
        """
        from lanex_operator.api.crd import validate_against_crd
        from lanex_operator.api.sweep_crd import validate_sweep_against_crd

        if not isinstance(resource, (Experiment, Sweep)):
            raise TypeError(f"expected a lanex.Experiment or lanex.Sweep, got {type(resource).__name__}")
        if resource.namespace and resource.namespace != self.namespace:
            raise InvalidSpecError(f"metadata.namespace is {resource.namespace!r} but this Cluster's namespace is "
                                   f"{self.namespace!r}: use lanex.Cluster(namespace={resource.namespace!r})")
        body = resource.to_dict()
        body["metadata"].pop("namespace", None)
        sweep = isinstance(resource, Sweep)
        problems = (validate_sweep_against_crd if sweep else validate_against_crd)(body)
        if problems:
            raise InvalidSpecError("; ".join(problems), problems)
        ref = (self.kube.sweep_ref if sweep else self.kube.experiment_ref)(resource.name)
        try:
            created = self.kube.create_sweep(body) if sweep else self.kube.create_experiment(body)
        except ClusterError as error:
            if not error.already_exists:
                raise
            existing = self.kube.get_sweep(resource.name) if sweep else self.kube.get_experiment(resource.name)
            differ = self._sweep_differs(existing, body) if sweep else spec_conflict(existing, resource.spec)
            if differ:
                detail = f" ({', '.join(differ[:5])})" if differ != ["spec"] or not sweep else ""
                raise ClusterError(f"{ref} already exists with a different spec{detail}; delete it (lanex delete "
                                   f"{resource.name}) or submit it under another name (--name)", 409) from None
            return Submitted(self._record(existing, sweep), created=False)
        return Submitted(self._record(created, sweep), created=True)

    @staticmethod
    def _sweep_differs(existing: dict[str, Any], body: dict[str, Any]) -> list[str]:
        try:
            same = parse_sweep_spec(existing.get("spec") or {}) == parse_sweep_spec(body["spec"])
        except InvalidSpecError:
            same = False
        return [] if same else ["spec"]

    @staticmethod
    def _record(obj: dict[str, Any], sweep: bool) -> Union[ExperimentRecord, SweepRecord]:
        return SweepRecord.from_object(obj) if sweep else ExperimentRecord.from_object(obj)

    # ---- experiments: read, follow

    def get(self, name: str) -> ExperimentRecord:
        """One experiment; ClusterError (`.not_found`) when there is none of that name."""
        return ExperimentRecord.from_object(self.kube.get_experiment(name))

    def find(self, name: str) -> Optional[ExperimentRecord]:
        """One experiment, or None."""
        found = self.kube.find_experiment(name)
        return None if found is None else ExperimentRecord.from_object(found)

    def list(self) -> list[ExperimentRecord]:
        """Every experiment of the namespace (sweeps' trials included), by name."""
        return [ExperimentRecord.from_object(obj) for obj in self.kube.list_experiments()]

    def events(self, name: Optional[str] = None, timeout: Optional[float] = None) -> Iterator[WatchEvent]:
        """The API server's watch of one experiment (or of all): `CURRENT` records, `SYNCED`, then every
        `ADDED`/`MODIFIED`/`DELETED` one (the watch of one experiment ends with its deletion).
        Raises WaitTimeout after `timeout` seconds."""
        for kind, obj in self.kube.watch_experiments(name, timeout, synced=True):
            yield WatchEvent(kind, ExperimentRecord.from_object(obj) if obj else None)

    def watch(self, name: str, timeout: Optional[float] = None) -> Iterator[ExperimentRecord]:
        """The experiment now, then each time its phase, progress (step, epoch, validation) or results
        change, as the API server's watch reports them; it ends once the experiment has finished or
        is deleted. Raises WaitTimeout after `timeout` seconds."""
        shown: Optional[tuple[Any, ...]] = None
        for kind, obj in self.kube.watch_experiment(name, timeout):
            if kind == "DELETED":
                return
            record = ExperimentRecord.from_object(obj)
            if _changed(record) != shown:
                shown = _changed(record)
                yield record
            if record.finished:
                return

    def wait(self, name: str, phase: Union[str, Phase] = Phase.SUCCEEDED,
             timeout: Optional[float] = None) -> ExperimentRecord:
        """Block until the experiment reaches `phase` (or has passed it on its way to Succeeded); its record.

        Raises NotReached when it ends in another phase (Failed: with the reason and message) or is
        deleted, WaitTimeout when `timeout` seconds pass first.
        """
        wanted = _wanted(phase, [p.value for p in Phase])
        ref = self.kube.experiment_ref(name)
        current: Optional[str] = None
        try:
            for kind, obj in self.kube.watch_experiment(name, timeout):
                if kind == "DELETED":
                    break
                record = ExperimentRecord.from_object(obj)
                current = record.phase.value if record.phase else None
                verdict = phase_reached(current, wanted)
                if verdict is True:
                    return record
                if verdict is False:
                    detail = ": ".join(x for x in (record.reason, record.message) if x)
                    raise NotReached(f"{ref} is {current}, not {wanted}" + (f": {detail}" if detail else ""),
                                     current, record)
        except WaitTimeout as error:
            raise WaitTimeout(f"{error.message} to be {wanted} (phase: {current or '-'})") from None
        raise NotReached(f"{ref} was deleted while waiting")

    def logs(self, name: str, follow: bool = False, *, worker: Optional[int] = None, prepare: bool = False,
             container: Optional[str] = None, on_note: Optional[Callable[[str], None]] = None) -> Iterator[str]:
        """The training launcher's log (mpirun/horovodrun output), worker `worker`'s, or the prepare Job's,
        as text chunks as they arrive. With `follow`: wait for the pod, then stream until it ends.

        When the API server has no log for the pod (kubelet gone) but the container has ended, its
        termination message stands in, after `on_note` (default: a warning log) says so.
        """
        if prepare and worker is not None:
            raise InvalidSpecError("--prepare and --worker exclude each other")
        obj = self.kube.get_experiment(name)
        target = log_target(obj, self.namespace, worker, prepare)
        pod = await_pod(self.kube, name, target) if follow else find_pod(self.kube, target)
        if pod is None:
            phase = (obj.get("status") or {}).get("phase") or "-"
            if phase in ("Succeeded", "Failed"):
                hint = " (cleanPodPolicy Running deletes workers when training ends)" if worker is not None else ""
                raise ClusterError(f"no {target.what}: the experiment is {phase}{hint}")
            raise ClusterError(f"no {target.what} yet (experiment phase: {phase}); use --follow to wait for it")
        pod_name = pod["metadata"]["name"]
        chosen = container_of(pod, target.container, container)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two chunks
        try:
            for chunk in self.kube.pod_log(pod_name, chosen, follow):
                text = decoder.decode(chunk)
                if text:
                    yield text
        except ClusterError as error:
            ended = termination_message(self.kube.get_pod(pod_name) or pod, chosen)
            if ended is None:
                raise
            code, message = ended
            (on_note or log.warning)(f"{error.message}; container {chosen} of pod {pod_name} exited with code "
                                     f"{code}, its termination message follows")
            yield message + "\n"
            return
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest

    def results(self, name: str) -> RunResults:
        """Test metrics and the validation curve of an experiment (metrics None until it has trained).
        `output_dir` and the pictures are paths on its dataset volume (and so in its result snapshot)."""
        from lanex_operator.api.documents import parsed_spec
        from lanex_operator.plan.steps import experiment_paths

        obj = self.kube.get_experiment(name)
        record = ExperimentRecord.from_object(obj)
        spec = parsed_spec(obj)
        metrics = record.results
        return RunResults(name=name, accuracy=metrics.accuracy, fp=metrics.fp, fn=metrics.fn,
                          validation=list(record.progress.validation_history) if record.progress else [],
                          epochs=metrics.epochs, images_per_second=metrics.images_per_second,
                          checkpoint=metrics.checkpoint, processes=spec.training.processes() if spec else None,
                          output_dir=experiment_paths(name).output_dir)

    # ---- delete

    def stop(self, name: str, why: str = "stopped on request") -> str:
        """End an experiment's training now: the operator deletes its MPIJob and the experiment ends Stopped (a
        snapshot on failure is still taken when its spec asks for one). Before training it stops when training
        would start. Returns what was asked."""
        obj = self.kube.get_experiment(name)
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Stopped"):
            raise ClusterError(f"{self.kube.experiment_ref(name)} has already ended "
                               f"({obj['status']['phase']}): nothing to stop")
        self.kube.stop_experiment(name, why)
        return f"{self.kube.experiment_ref(name)}: stop asked ({why}); the operator ends its training"

    def delete(self, name: str, *, wait: bool = False, timeout: Optional[float] = None) -> Deletion:
        """Delete an experiment; the operator's finalizer applies its retention policy first.

        The Deletion says what retention keeps (dataset claim, snapshots) and what goes with it; with
        `wait`, also what the operator did once it is gone (WaitTimeout after `timeout` seconds).
        """
        from lanex_operator.client.deletion import retention_plan
        from lanex_operator.controller.retention import snapshots_in_use

        obj = self.kube.get_experiment(name)
        snapshots = self.kube.list_snapshots(name)
        in_use = snapshots_in_use(self.kube.list_claims()) if snapshots else {}
        keeps, removes = retention_plan(obj, snapshots, in_use)
        self.kube.delete_experiment(name)
        deletion = Deletion(name, keeps, removes, kind="LaneExperiment", uid=obj["metadata"].get("uid"))
        return self.wait_gone(deletion, timeout) if wait else deletion

    def wait_gone(self, deletion: Deletion, timeout: Optional[float] = None) -> Deletion:
        """After `delete(...)`: block until the object is gone; the Deletion with what the operator did."""
        from lanex_operator.client.deletion import deleted_event

        if deletion.kind == "LaneSweep":
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.kube.find_sweep(deletion.name) is not None:
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"timed out after {timeout:g}s waiting for "
                                      f"{self.kube.sweep_ref(deletion.name)} to be gone")
                time.sleep(SWEEP_GONE_POLL_S)
            return replace(deletion, gone=True)
        try:
            for kind, _ in self.kube.watch_experiment(deletion.name, timeout):
                if kind == "DELETED":
                    break
        except ClusterError as error:
            if not error.not_found:
                raise
        body = {"metadata": {"name": deletion.name, "uid": deletion.uid}}
        return replace(deletion, gone=True, operator_message=deleted_event(self.kube, body))

    # ---- sweeps

    def get_sweep(self, name: str) -> SweepRecord:
        """One sweep; ClusterError (`.not_found`) when there is none of that name."""
        return SweepRecord.from_object(self.kube.get_sweep(name))

    def find_sweep(self, name: str) -> Optional[SweepRecord]:
        found = self.kube.find_sweep(name)
        return None if found is None else SweepRecord.from_object(found)

    def list_sweeps(self) -> list[SweepRecord]:
        """Every sweep of the namespace (none where the LaneSweep CRD is not installed)."""
        return [SweepRecord.from_object(obj) for obj in self.kube.list_sweeps()]

    def trials(self, sweep: str) -> list[ExperimentRecord]:
        """A sweep's trials (LaneExperiments labelled with it), by name."""
        return [ExperimentRecord.from_object(obj) for obj in self.kube.list_trials(sweep)]

    def leaderboard(self, sweep: str) -> list[TrialRecord]:
        """A sweep's succeeded trials, best first by its objective."""
        return self.get_sweep(sweep).leaderboard()

    def watch_sweep(self, name: str, timeout: Optional[float] = None) -> Iterator[SweepRecord]:
        """`watch` for a sweep: the record now, then each change of its phase, trials table or best trial;
        it ends once the sweep has finished or is deleted. WaitTimeout after `timeout` seconds."""
        shown: Optional[tuple[Any, ...]] = None
        for kind, obj in self.kube.watch_sweep(name, timeout):
            if kind == "DELETED":
                return
            record = SweepRecord.from_object(obj)
            key = (record.phase, record.reason, record.trials, record.best, record.counts)
            if key != shown:
                shown = key
                yield record
            if record.finished:
                return

    def wait_sweep(self, name: str, phase: Union[str, SweepPhase] = SweepPhase.SUCCEEDED,
                   timeout: Optional[float] = None) -> SweepRecord:
        """`wait` for a sweep: Succeeded (or Running, PreparingDataset, ...); NotReached, WaitTimeout."""
        wanted = _wanted(phase, [p.value for p in SweepPhase])
        ref = self.kube.sweep_ref(name)
        current: Optional[str] = None
        try:
            for kind, obj in self.kube.watch_sweep(name, timeout):
                if kind == "DELETED":
                    break
                record = SweepRecord.from_object(obj)
                current = record.phase.value if record.phase else None
                verdict = phase_reached(current, wanted, SWEEP_LIFECYCLE, SWEEP_ENDS)
                if verdict is True:
                    return record
                if verdict is False:
                    detail = ": ".join(x for x in (record.reason, record.message) if x)
                    raise NotReached(f"{ref} is {current}, not {wanted}" + (f": {detail}" if detail else ""),
                                     current, record)
        except WaitTimeout as error:
            raise WaitTimeout(f"{error.message} to be {wanted} (phase: {current or '-'})") from None
        raise NotReached(f"{ref} was deleted while waiting")

    def delete_sweep(self, name: str, *, wait: bool = False, timeout: Optional[float] = None) -> Deletion:
        """Delete a sweep: its trials go with it (owner references, each with its own retention), the
        dataset as the sweep's `retention.dataset` says."""
        obj = self.kube.get_sweep(name)
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        policy = (spec.get("retention") or {}).get("dataset", "Retain")
        trials = self.kube.list_trials(name)
        self.kube.delete_sweep(name)
        removes = [f"{len(trials)} trial(s) (each applies its own retention)"
                   + (f", dataset PersistentVolumeClaim {status['datasetClaim']} and VolumeSnapshot "
                      f"{status.get('datasetSnapshot')}" if policy == "Delete" and status.get("datasetClaim") else "")]
        keeps = [] if policy == "Delete" else [
            f"the dataset ({status.get('datasetSnapshot') or 'not prepared yet'}; retention.dataset: Retain)"]
        deletion = Deletion(name, keeps, removes, kind="LaneSweep", uid=obj["metadata"].get("uid"))
        return self.wait_gone(deletion, timeout) if wait else deletion

    # ---- comparing runs

    def compare(self, names: Sequence[str]) -> list[ComparedRun]:
        """Experiments (or a sweep: its trials) side by side: parameters, training spec, results, curves."""
        objects: list[dict[str, Any]] = []
        for name in names:
            found = self.kube.find_experiment(name)
            if found is not None:
                objects.append(found)
                continue
            if self.kube.find_sweep(name) is None:
                raise ClusterError(f"no laneexperiment or lanesweep {self.namespace}/{name}", 404)
            objects += self.kube.list_trials(name)
        runs = []
        for obj in objects:
            annotations = obj["metadata"].get("annotations") or {}
            parameters = (json.loads(annotations[TRIAL_PARAMETERS_ANNOTATION])
                          if TRIAL_PARAMETERS_ANNOTATION in annotations else None)
            record = ExperimentRecord.from_object(obj)
            runs.append(ComparedRun(record.name, record.phase.value if record.phase else None, parameters,
                                    dict((obj.get("spec") or {}).get("training") or {}), record.results,
                                    list(record.progress.validation_history) if record.progress else []))
        return runs

    # ---- snapshots

    def snapshots(self, experiment: Optional[str] = None) -> list[ClusterSnapshot]:
        """VolumeSnapshots of lanex experiments (only `experiment`'s: by label and its status.snapshots)."""
        found = {s["metadata"]["name"]: s for s in self.kube.list_snapshots(experiment)}
        if experiment:
            obj = self.kube.find_experiment(experiment)
            for record in ((obj or {}).get("status") or {}).get("snapshots") or []:
                if record.get("name") and record["name"] not in found:
                    snapshot = self.kube.find_snapshot(record["name"])
                    if snapshot is not None:
                        found[record["name"]] = snapshot
        return [ClusterSnapshot.from_object(obj) for obj in found.values()]

    def restore(self, snapshot: str, to: str, storage_class: Optional[str] = None) -> dict[str, Any]:
        """A new PVC `to` whose dataSource is the VolumeSnapshot (yours: no experiment owns it); the claim
        as created. Train on it with `dataset.existingClaim`. ClusterError when the snapshot is not ready."""
        from lanex_operator.client.restore import restore_claim

        return self.kube.create_claim(restore_claim(self.kube, self.kube.get_snapshot(snapshot), to, storage_class))

    def restore_experiment(self, snapshot: str, name: Optional[str] = None,
                           storage_class: Optional[str] = None) -> Experiment:
        """An Experiment like the one that took `snapshot`, whose dataset is restored from it
        (`dataset.fromSnapshot`), named `name` (default `<source>-restored`); submit it to train."""
        from lanex_operator.client.restore import restore_spec

        source, spec = restore_spec(self.kube, self.kube.get_snapshot(snapshot), storage_class)
        document = experiment_document({"name": name or f"{source or 'experiment'}-restored",
                                        "namespace": self.namespace}, spec)
        return Experiment.from_dict(document, "the restore experiment (--to names it)")
