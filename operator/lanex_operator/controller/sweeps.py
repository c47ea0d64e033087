"""The LaneSweep lifecycle: dataset once, one snapshot, trials as LaneExperiments, early stopping, the best.

Why it exists: a sweep is the sweep controller's decision logic, kept apart from kopf's wiring
(`sweep_handlers`) like the experiment's `reconciler`. A pass reads the sweep (its spec, frozen in
an annotation at the start, and the status the operator wrote), its dataset children and its
trials (fed by watch events into `TrialCache`), then:

    Pending -> Preflight (what the dataset Job borrows is opted in; a snapshot class fits an existing claim)
    -> PreparingDataset: dataset PVC Bound -> prepare Job Complete -> VolumeSnapshot
    `<sweep>-dataset` ready (a `fromSnapshot` template uses its snapshot directly)
    -> Running: trials `<sweep>-NNN` created in order, at most `parallelism` unfinished; trials below
    the median stopped (annotation `lanex.dev/stop`: the trial's own reconciler deletes its MPIJob
    and ends Stopped/EarlyStopped) -> all final: retention (keep the best N), bestTrial,
    Succeeded (or Failed when no trial succeeded)

With MLflow tracking (`spec.template.tracking.mlflow`) the sweep is an MLflow parent run with its
trials' runs as children. The operator never holds the server's credentials (they are a Secret the
trainers read), so a Job `<sweep>-mlflow` (`lanex mlflow sweep-run`, in the trainer image, with the
Secret's keys as environment) finds or creates the parent run at the start; its answer (the run's
link) becomes `status.mlflow`, and trials created after that carry its run id (annotation
`lanex.dev/mlflow-parent-run-id`). A trial that starts before finds the parent itself by the sweep's
uid. At the end a Job `<sweep>-mlflow-end` ends the parent run and adopts any trial run left without
it. A tracking server that does not answer never holds the sweep up: condition MLflowParentRun says so.

The dataset children are built by the experiment's pure builders from the experiment plan of the
template (`plan_for("<sweep>-dataset", template)`): the same PVC, prepare Job and VolumeSnapshot as
an experiment's, labelled `lanex.dev/sweep` instead of `lanex.dev/experiment` (so no experiment ever
takes them for its own). Every child and trial has a deterministic name and is created first and
read on AlreadyExists, so a pass after a restart at any moment creates exactly one of each. All a
pass learns goes out in one status patch; Events mark each transition. Nothing is retried forever: a
retryable API error is, anything else ends the sweep Failed with a condition and a Warning Event.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import kopf

from lanex_operator.api.models import API_VERSION, PLURAL, ConditionType, InvalidSpecError, MlflowLink
from lanex_operator.api.sweep import (
    MLFLOW_PARENT_ANNOTATION,
    SWEEP_LABEL,
    SWEEP_PLURAL,
    TRIAL_PARAMETERS_ANNOTATION,
    LaneSweepSpec,
    SweepPhase,
    check_sweep_name,
    dataset_snapshot_name,
    mlflow_job_name,
    parse_sweep_spec,
    trial_count,
    trial_name,
    trial_parameters,
    trial_spec,
)
from lanex_operator.controller import builders
from lanex_operator.controller.children import EXPERIMENT_LABEL, JOB, PVC, SNAPSHOT, ChildCache, ChildKind, create_child, read_child
from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.controller.preflight import Preflight, chooses_class_by_driver
from lanex_operator.controller.diagnosis import WaitDiagnosis
from lanex_operator.controller.reconciler import (
    JOB_POD_SELECTOR,
    PREPARED_ANNOTATION,
    STOP_ANNOTATION,
    EventPoster,
    kopf_event,
)
from lanex_operator.controller.status import StatusBook, clip, parse_utc
from lanex_operator.controller.waits import STUCK_REASONS
from lanex_operator.plan.defaults import ClusterDefaults
from lanex_operator.plan.steps import ExperimentPlan, plan_for
from lanex_operator.plan.sweep import (FINAL_PHASES, TrialView, best_trial, counts, mlflow_sweep_run, next_trials, retained,
                                       to_stop)

# A trial moving between its own unfinished phases changes the sweep's trials table but decides nothing;
# such writes wait (at most this long) to go out with the next one that matters, so a sweep of many
# trials costs about one status patch per finished trial.
MINOR_STATUS_DELAY_SECONDS = 2.0
SWEEP_SPEC_ANNOTATION = "lanex.dev/sweep-spec"  # on the sweep: the spec it started with (later edits are ignored)
SWEEP_TERMINAL = (SweepPhase.SUCCEEDED.value, SweepPhase.FAILED.value)
MLFLOW_CONDITION = ConditionType.MLFLOW_PARENT_RUN.value
MLFLOW_JOB_FAILED = "JobFailed"
DELETE_ALL = {"dataset": "Delete", "snapshots": "Delete"}
log = logging.getLogger("lanex.operator.sweeps")


def sweep_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return object_path(API_VERSION, SWEEP_PLURAL, namespace, name, subresource)


class TrialCache:
    """The latest body of every trial (a LaneExperiment labelled `lanex.dev/sweep`), by sweep; fed by watch events."""

    def __init__(self) -> None:
        self._trials: dict[tuple[str, str], dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.listed: set[tuple[str, str]] = set()  # sweeps whose trials were listed once since start

    def put(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        sweep = (meta.get("labels") or {}).get(SWEEP_LABEL)
        if not sweep:
            return
        trials = self._trials[(meta.get("namespace") or "", sweep)]
        current = trials.get(meta.get("name") or "")
        if current is not None and _version(current) > _version(obj) >= 0:
            return
        trials[meta.get("name") or ""] = dict(obj)

    def forget(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        sweep = (meta.get("labels") or {}).get(SWEEP_LABEL)
        if sweep:
            self._trials[(meta.get("namespace") or "", sweep)].pop(meta.get("name") or "", None)

    def of(self, namespace: str, sweep: str) -> dict[str, dict[str, Any]]:
        return self._trials.get((namespace, sweep), {})

    def drop(self, namespace: str, sweep: str) -> None:
        self._trials.pop((namespace, sweep), None)
        self.listed.discard((namespace, sweep))


def _version(obj: Mapping[str, Any]) -> int:
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1


def trial_history(trial: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """A trial's validations so far, from `status.progress.validationHistory` (the progress contract).

    The only place where the sweep controller reads a trial's progress."""
    progress = (trial.get("status") or {}).get("progress") or {}
    history = progress.get("validationHistory") if isinstance(progress, Mapping) else None
    return tuple(dict(h) for h in history or [] if isinstance(h, Mapping) and isinstance(h.get("epoch"), int))


def _relabel(manifest: dict[str, Any], sweep: str) -> dict[str, Any]:
    """A builder's child of the dataset plan, labelled as the sweep's (not as an experiment's)."""
    for labels in (manifest["metadata"].get("labels"), ((manifest.get("spec") or {}).get("template") or {})
                   .get("metadata", {}).get("labels")):
        if labels is not None:
            labels.pop(EXPERIMENT_LABEL, None)
            labels[SWEEP_LABEL] = sweep
    return manifest


def _in_template(message: str) -> str:
    """A message about an experiment spec's fields, about the sweep's template instead."""
    return message.replace("spec.", "spec.template.")


def _true(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


class SweepReconciler:
    """Decides and takes the next step of one sweep; shared by all sweeps."""

    def __init__(self, kube: Kube, trials: TrialCache, config: OperatorConfig, post_event: EventPoster = kopf_event,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 defaults: ClusterDefaults | None = None, cache: ChildCache | None = None,
                 preflight: Preflight | None = None) -> None:
        self.kube = kube
        self.preflight = preflight if preflight is not None else Preflight(kube, config.preflight_cache_seconds)
        self.cache = cache if cache is not None else ChildCache()  # the dataset children, fed by watch events
        self.trials = trials
        self.config = config
        self.post_event = post_event
        self.now = now
        self.defaults = defaults if defaults is not None else ClusterDefaults.from_env()
        self._parsed: dict[str, LaneSweepSpec | InvalidSpecError] = {}
        # Why the dataset step waits (a claim's provisioner Warning, prepare pods that cannot start), as for experiments.
        self.diagnosis = WaitDiagnosis(kube, config, now)

    # ---- the pass

    async def reconcile(self, body: Mapping[str, Any], book: StatusBook) -> float | None:
        """One pass; seconds until the next check, or None once the sweep is finished."""
        try:
            if book.phase in SWEEP_TERMINAL:
                await self.flush(body, book)
                return None
            wait = await self._pass(body, book)
            if book.phase in SWEEP_TERMINAL:
                await self._end_parent_run(body, book)
        except KubeError as exc:
            if exc.retryable:
                raise
            self._fail(book, "ApiError", clip(f"API request failed and cannot be retried: {exc}"))
            wait = None
        except InvalidSpecError as exc:  # e.g. the dataset's plan: a default scheduler that cannot apply here
            self._fail(book, "InvalidSpec", clip(f"invalid spec: {exc.message}"))
            wait = None
        except Exception as exc:  # noqa: BLE001  a bug, or data nothing foresaw: said once, never retried forever
            log.exception(f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}: unexpected error")
            self._fail(book, "ReconcileError", clip(f"the operator cannot handle this sweep ({type(exc).__name__}: "
                                                    f"{exc}); it is not retried: delete the LaneSweep, or report "
                                                    f"this as a lanex bug with the operator's log"))
            wait = None
        if wait is not None and book.changed and not self._matters(book):
            due = getattr(book, "minor_since", None)
            if due is None:
                book.minor_since = self.now()  # type: ignore[attr-defined]
                return min(wait, MINOR_STATUS_DELAY_SECONDS)
            left = MINOR_STATUS_DELAY_SECONDS - (self.now() - due).total_seconds()
            if left > 0:
                return min(wait, left)
        await self.flush(body, book)
        book.minor_since = None  # type: ignore[attr-defined]
        book.written_signature = self._signature(book)  # type: ignore[attr-defined]
        return wait

    async def give_up(self, body: Mapping[str, Any], book: StatusBook, exc: BaseException) -> None:
        """The last resort when a pass cannot even write its status (the API refused the write): the failure the
        pass decided (else ReconcileError) as a fresh status of phase Failed with the two terminal conditions, and
        its Warning Event, which also says why the status could not be written. Never retried."""
        meta = body["metadata"]
        if book.phase != SweepPhase.FAILED.value:
            self._fail(book, "ReconcileError", clip(f"the operator cannot handle this sweep ({type(exc).__name__}: "
                                                    f"{exc}); it is not retried: delete the LaneSweep, or report "
                                                    f"this as a lanex bug with the operator's log"))
        fresh = StatusBook(None, book.generation, now=self.now)
        for key in ("phase", "reason", "message", "completionTime"):
            fresh.set(key, book.data.get(key))
        for type_ in ("Failed", "Succeeded"):
            kept = book.condition(type_) or {}
            fresh.set_condition(type_, str(kept.get("status")), str(kept.get("reason")), str(kept.get("message")))
        unwritten = ""
        try:
            await self.kube.patch(sweep_path(meta["namespace"], meta["name"], "status"), fresh.merge_patch())
        except KubeError as error:
            log.error(f"{meta['namespace']}/{meta['name']}: cannot record the failure: {error}")
            unwritten = f" (the status could not be written: {error.status} {error.reason}: {error.message})"
        warnings = [event for event in book.events if event.type == "Warning"] or book.events
        for event in warnings[-1:]:
            self.post_event(body, event.type, event.reason, clip(event.message + unwritten))
        book.events.clear()

    @staticmethod
    def _signature(book: StatusBook) -> str:
        """What a status write must not hold back: phase, conditions, dataset, finished trials, the best one."""
        data = book.data
        counts_ = data.get("counts") or {}
        finished = [(row.get("name"), row.get("phase"), row.get("deleted")) for row in data.get("trials") or []
                    if row.get("phase") in FINAL_PHASES]
        return json.dumps([data.get("phase"), data.get("message"), data.get("conditions"), data.get("datasetSnapshot"),
                           data.get("bestTrial"), finished, [counts_.get(k) for k in ("succeeded", "failed", "stopped")]],
                          sort_keys=True, default=str)

    def _matters(self, book: StatusBook) -> bool:
        return book.events != [] or self._signature(book) != getattr(book, "written_signature", None)

    async def _pass(self, body: Mapping[str, Any], book: StatusBook) -> float | None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        spec = await self._spec(body, book)
        if spec is None:
            return None
        if book.phase is None:
            book.set("startTime", book.now_text())
            book.set("trialCount", trial_count(spec))
            book.set_condition("Succeeded", "Unknown", "InProgress", "the sweep is running")
            book.set_condition("Failed", "False", "InProgress", "the sweep is running")
            self._enter(book, SweepPhase.PENDING, f"sweep of {trial_count(spec)} trial(s), {spec.parallelism} at a time")
        await self._parent_run(body, book, spec)
        if not book.is_true("DatasetReady"):
            wait = await self._dataset(body, book, spec)
            if wait is not None or book.phase in SWEEP_TERMINAL:
                return wait
        if (namespace, name) not in self.trials.listed:  # after a start: what exists, before deciding anything
            for trial in await self.kube.list(object_path(API_VERSION, PLURAL, namespace),
                                              label_selector=f"{SWEEP_LABEL}={name}"):
                self.trials.put(trial)
            self.trials.listed.add((namespace, name))
        return await self._trials(body, book, spec)

    async def flush(self, body: Mapping[str, Any], book: StatusBook) -> None:
        meta = body["metadata"]
        if book.changed:
            await self.kube.patch(sweep_path(meta["namespace"], meta["name"], "status"), book.merge_patch())
            book.written()
        for event in book.events:
            self.post_event(body, event.type, event.reason, event.message)
        book.events.clear()
        book.timings.clear()

    # ---- spec: validated once, frozen at the start

    async def _spec(self, body: Mapping[str, Any], book: StatusBook) -> LaneSweepSpec | None:
        meta = body["metadata"]
        current_text = json.dumps(body.get("spec") or {}, sort_keys=True)
        frozen_text = (meta.get("annotations") or {}).get(SWEEP_SPEC_ANNOTATION)
        book.set("observedGeneration", int(meta.get("generation") or 1))
        try:  # the CRD refuses such a name; one created before it did cannot name its trials or its dataset
            check_sweep_name(meta["name"])
        except InvalidSpecError as exc:
            if book.phase is None:
                book.set("startTime", book.now_text())
            self._fail(book, "InvalidSpec", clip(f"invalid name: {exc.message}"))
            return None
        if frozen_text is None:
            if book.phase is not None and book.phase != SweepPhase.PENDING.value:
                frozen_text = current_text  # annotation lost: go on with what is there
            else:
                parsed = self._parse(current_text)
                if isinstance(parsed, InvalidSpecError):
                    if book.phase is None:
                        book.set("startTime", book.now_text())
                    self._fail(book, "InvalidSpec", clip(f"invalid spec: {parsed.message}"))
                    return None
                await self.kube.patch(sweep_path(meta["namespace"], meta["name"]),
                                      {"metadata": {"annotations": {SWEEP_SPEC_ANNOTATION: current_text}}})
                return parsed
        parsed = self._parse(frozen_text)
        if isinstance(parsed, InvalidSpecError):
            self._fail(book, "InvalidSpec", clip(f"invalid spec: {parsed.message}"))
            return None
        if current_text != frozen_text:
            message = (f"spec generation {meta.get('generation')} was not applied: a sweep keeps the spec it started "
                       f"with (its trials were made from it); create a new LaneSweep to run the changed spec")
            if book.set_condition("SpecChangeIgnored", "True", "SweepStarted", message):
                book.event("Warning", "SpecChangeIgnored", message)
        return parsed

    def _parse(self, text: str) -> LaneSweepSpec | InvalidSpecError:
        parsed = self._parsed.get(text)
        if parsed is None:
            try:
                parsed = parse_sweep_spec(json.loads(text))
            except InvalidSpecError as exc:
                parsed = exc
            except ValueError as exc:  # the annotation was edited by hand
                parsed = InvalidSpecError(f"annotation {SWEEP_SPEC_ANNOTATION} is not JSON: {exc}")
            if len(self._parsed) > 1024:
                self._parsed.clear()
            self._parsed[text] = parsed
        return parsed

    # ---- dataset: prepared once, snapshotted once

    def dataset_plan(self, namespace: str, sweep: str, spec: LaneSweepSpec) -> ExperimentPlan:
        """The experiment plan of the sweep's dataset: the template's dataset and prepare steps, always snapshotted."""
        template = spec.template.model_copy(update={"snapshot": spec.template.snapshot.model_copy(update={"enabled": True})})
        return plan_for(dataset_snapshot_name(sweep), namespace, template, defaults=self.defaults)

    async def _dataset(self, body: Mapping[str, Any], book: StatusBook, spec: LaneSweepSpec) -> float | None:
        meta = body["metadata"]
        namespace, sweep = meta["namespace"], meta["name"]
        source = spec.template.dataset
        if source.from_snapshot is not None:
            name = source.from_snapshot.snapshot_name
            snapshot = await self._child(SNAPSHOT, namespace, name)
            if snapshot is None:
                self._fail(book, "DatasetFailed", f'VolumeSnapshot "{name}" (spec.template.dataset.fromSnapshot) not found')
                return None
            return self._dataset_ready(book, name, "FromSnapshot", f"the trials restore VolumeSnapshot {name}")
        plan = self.dataset_plan(namespace, sweep, spec)
        if not book.is_true("Preflight"):
            wait = await self._dataset_preflight(book, plan)
            if wait is not None or book.phase == SweepPhase.FAILED.value:
                return wait
        owner = {"name": plan.name, "namespace": namespace}
        self._enter(book, SweepPhase.PREPARING_DATASET, f"preparing the dataset once on PersistentVolumeClaim "
                                                        f"{plan.dataset.claim_name}")
        book.set("datasetClaim", plan.dataset.claim_name)
        claim_path = object_path(PVC.api_version, PVC.plural, namespace, plan.dataset.claim_name)
        pvc = await self._child(PVC, namespace, plan.dataset.claim_name, fresh=not plan.dataset.creates_claim)
        if pvc is None:
            if not plan.dataset.creates_claim:
                self._fail(book, "DatasetFailed", f'PersistentVolumeClaim "{plan.dataset.claim_name}" '
                                                  f"(spec.template.dataset.existingClaim.claimName) not found")
                return None
            manifest = _relabel(builders.pvc_for(owner, spec.template, plan), sweep)
            if spec.retention.dataset == "Delete":
                kopf.adopt(manifest, owner=dict(body))
            pvc = await self._create(PVC, manifest)
        claim = plan.dataset.claim_name
        if (pvc.get("status") or {}).get("phase") != "Bound":
            if book.condition("DatasetReady") is None:
                book.set_condition("DatasetReady", "Unknown", "Provisioning", f"waiting for PersistentVolumeClaim "
                                                                              f"{claim} to be bound")
            failure, left = await self.diagnosis.claim_unbound(book, "DatasetReady", namespace, claim,
                                                               (pvc.get("status") or {}).get("phase"))
            if failure:
                self._fail(book, "DatasetFailed", failure)
                return None
            return min(self.config.resync_seconds, left)
        prepared = ((pvc.get("metadata") or {}).get("annotations") or {}).get(PREPARED_ANNOTATION) == "true"
        if plan.prepare is not None and not prepared:
            book.set("prepareJob", plan.names.prepare_job)
            job = await self._child(JOB, namespace, plan.names.prepare_job)
            if job is None:
                manifest = _relabel(builders.prepare_job_for(owner, spec.template, plan), sweep)
                kopf.adopt(manifest, owner=dict(body))
                job = await self._create(JOB, manifest)
            if _true(job, "Failed"):
                failed = _true(job, "Failed") or {}
                self._fail(book, "DownloadFailed", clip(f"Job {plan.names.prepare_job} failed "
                                                        f"({failed.get('reason', 'Failed')}: {failed.get('message', '')})"))
                return None
            if not _true(job, "Complete"):
                owner_text = f"Job {plan.names.prepare_job}"
                if (book.condition("DatasetReady") or {}).get("reason") not in (*STUCK_REASONS, "InProgress"):
                    book.set_condition("DatasetReady", "Unknown", "Preparing", f"{owner_text} is preparing the dataset")
                failure = await self.diagnosis.pods_stuck(book, "DatasetReady", owner_text, namespace,
                                                          JOB_POD_SELECTOR.format(name=plan.names.prepare_job))
                if failure:
                    self._fail(book, "DatasetFailed", failure)
                    return None
                return self.config.resync_seconds
            if plan.dataset.creates_claim:
                self.cache.put(PVC, await self.kube.patch(claim_path, {"metadata": {"annotations": {
                    PREPARED_ANNOTATION: "true"}}}))
        name = dataset_snapshot_name(sweep)
        snapshot = await self._child(SNAPSHOT, namespace, name)
        if snapshot is None:
            klass, problem = await self.preflight.snapshot_class(plan)  # the experiments' rule, as at Preflight
            if problem is not None:
                self._fail(book, "SnapshotFailed", clip(_in_template(problem.message)))
                return None
            assert plan.snapshot is not None
            if klass is not None:
                plan = dataclasses.replace(plan, snapshot=dataclasses.replace(plan.snapshot,
                                                                              volume_snapshot_class_name=klass))
            manifest = _relabel(builders.snapshot_for(owner, spec.template, plan, self.now()), sweep)
            manifest["metadata"]["name"] = name  # deterministic: one dataset snapshot per sweep, ever
            snapshot = await self._create(SNAPSHOT, manifest)
            book.set_condition("DatasetReady", "Unknown", "Snapshotting", f"snapshotting the prepared dataset as "
                                                                         f"VolumeSnapshot {name}")
        status = snapshot.get("status") or {}
        if status.get("readyToUse"):
            return self._dataset_ready(book, name, "Snapshotted", f"the dataset was prepared once and snapshotted as "
                                                                  f"VolumeSnapshot {name}")
        error = (status.get("error") or {}).get("message")
        assert plan.snapshot is not None
        created = parse_utc((snapshot.get("metadata") or {}).get("creationTimestamp"))
        elapsed = 0.0 if created is None else (self.now() - created).total_seconds()
        if elapsed >= plan.snapshot.ready_timeout_seconds:
            self._fail(book, "SnapshotFailed", clip(f"VolumeSnapshot {name} was not ready to use after {int(elapsed)}s"
                                                    + (f": {error}" if error else "")))
            return None
        if error:
            book.set("message", clip(f"the snapshot controller reports for VolumeSnapshot {name}: {error}"))
        return min(self.config.resync_seconds, plan.snapshot.ready_timeout_seconds - elapsed)

    async def _dataset_preflight(self, book: StatusBook, plan: ExperimentPlan) -> float | None:
        """The experiments' Preflight for what the sweep itself creates, before it creates any of it: the Secrets
        and ServiceAccount its prepare Job would borrow are opted in, and a claim it did not create has a
        VolumeSnapshotClass of its CSI driver. None once passed (or failed past its bound), else seconds until
        the next check."""
        problems = await self.preflight.credentials(plan, root="spec.template")
        if plan.snapshot is not None and chooses_class_by_driver(plan):
            _, problem = await self.preflight.snapshot_class(plan)
            if problem is not None:
                problems.append(dataclasses.replace(problem, message=_in_template(problem.message)))
        if problems:
            reason = problems[0].reason if len(problems) == 1 else "MissingDependencies"
            message = clip("; ".join(problem.message for problem in problems))
            waited, limit = book.since("Preflight"), self.config.preflight_timeout_seconds
            if book.condition("Preflight") is not None and waited >= limit:
                self._fail(book, "PreflightFailed", clip(f"still missing after {int(waited)}s "
                                                         f"(LANEX_OPERATOR_PREFLIGHT_TIMEOUT_SECONDS={limit:g}): "
                                                         f"{reason}: {message}"))
                return None
            if book.set_condition("Preflight", "False", reason, message):
                book.event("Warning", reason, message)
            book.set("message", message)
            return min(self.config.preflight_retry_seconds, limit - waited)
        book.set_condition("Preflight", "True", "Passed", "what the sweep's dataset uses exists and may be used")
        return None

    def _dataset_ready(self, book: StatusBook, snapshot: str, reason: str, message: str) -> None:
        book.set("datasetSnapshot", snapshot)
        book.set_condition("DatasetReady", "True", reason, message)
        book.event("Normal", "DatasetReady", message)
        return None

    # ---- MLflow: the parent run, by the sweep's Jobs

    def _mlflow_run(self, body: Mapping[str, Any], spec: LaneSweepSpec, end: str | None = None,
                    tags: Mapping[str, str] | None = None):
        meta = body["metadata"]
        image = self.dataset_plan(meta["namespace"], meta["name"], spec).trainer_image  # the trials' image
        return mlflow_sweep_run(meta["namespace"], meta["name"], str(meta.get("uid") or ""), spec, image,
                                spec.template.training.image_pull_policy, end, tags)

    async def _parent_run(self, body: Mapping[str, Any], book: StatusBook, spec: LaneSweepSpec) -> None:
        """Create the Job that finds or creates the parent run (once its Secret is opted in), then read its
        answer into status.mlflow. Nothing here waits: the trials go on without it."""
        if spec.template.tracking is None or spec.template.tracking.mlflow is None or book.data.get("mlflow"):
            return
        if (book.condition(MLFLOW_CONDITION) or {}).get("reason") == MLFLOW_JOB_FAILED:
            return  # said once; `lanex mlflow sweep-run` can still be run by hand
        meta = body["metadata"]
        namespace, name = meta["namespace"], mlflow_job_name(meta["name"])
        job = await self._child(JOB, namespace, name)
        if job is None:
            run = self._mlflow_run(body, spec)
            problems = await self.preflight.secret_env(namespace, run.secret_env, root="spec.template")
            if problems:
                message = clip("; ".join(problem.message for problem in problems))
                if book.set_condition(MLFLOW_CONDITION, "False", problems[0].reason, message):
                    book.event("Warning", problems[0].reason, message)
                return
            manifest = builders.sweep_mlflow_job_for(meta, name, run)
            kopf.adopt(manifest, owner=dict(body))
            await self._create(JOB, manifest)
            book.set_condition(MLFLOW_CONDITION, "Unknown", "Creating",
                               f"Job {name} finds or creates the sweep's MLflow parent run")
            return
        failed = _true(job, "Failed")
        if not failed and not _true(job, "Complete"):
            return
        found = await self.diagnosis.last_termination(namespace, f"batch.kubernetes.io/job-name={name}")
        text = found[1] if found else ""
        link = None
        if not failed:
            try:
                link = MlflowLink.model_validate(json.loads(text))
            except ValueError:
                link = None
        if link is None:
            message = clip(f"Job {name} could not find or create the sweep's MLflow parent run"
                           + (f": {text}" if text else "") + "; the trials still log their own runs, tagged "
                           "lanex.sweepUid, and become the parent's children once it exists")
            book.set_condition(MLFLOW_CONDITION, "False", MLFLOW_JOB_FAILED, message)
            book.event("Warning", "MLflowParentRunFailed", message)
            return
        book.set("mlflow", link.model_dump(by_alias=True, exclude_none=True))
        message = f"the trials' MLflow runs are children of run {link.run_id}" + (f" ({link.url})" if link.url else "")
        book.set_condition(MLFLOW_CONDITION, "True", "Created", message)
        book.event("Normal", MLFLOW_CONDITION, message)

    async def _end_parent_run(self, body: Mapping[str, Any], book: StatusBook) -> None:
        """Once the sweep is final: the Job that ends the parent run, tagged with the best trial (best effort)."""
        meta = body["metadata"]
        link = book.data.get("mlflow")
        text = (meta.get("annotations") or {}).get(SWEEP_SPEC_ANNOTATION)
        spec = self._parse(text) if text else None
        if not link or not isinstance(spec, LaneSweepSpec):
            return
        namespace, name = meta["namespace"], mlflow_job_name(meta["name"], end=True)
        if await self._child(JOB, namespace, name) is not None:
            return
        tags = {"lanex.phase": str(book.phase)}
        best = book.data.get("bestTrial") or {}
        if best.get("name"):
            tags["lanex.bestTrial"] = str(best["name"])
        if best.get("objective") is not None:
            tags[f"lanex.best.{spec.objective.metric}"] = str(best["objective"])
        status = "FINISHED" if book.phase == SweepPhase.SUCCEEDED.value else "FAILED"
        manifest = builders.sweep_mlflow_job_for(meta, name, self._mlflow_run(body, spec, status, tags))
        kopf.adopt(manifest, owner=dict(body))
        try:
            await self._create(JOB, manifest)
        except KubeError as exc:  # the sweep's outcome stands; only its MLflow run stays RUNNING
            log.warning(f"{namespace}/{meta['name']}: Job {name} not created: {exc}")
            book.event("Warning", "MLflowParentRunNotEnded", clip(f"Job {name} not created: {exc}"))

    # ---- trials

    def views(self, namespace: str, sweep: str, spec: LaneSweepSpec, book: StatusBook) -> list[TrialView]:
        """Every trial as the sweep sees it: the cached LaneExperiment, else its last row (deleted or not yet seen)."""
        known = self.trials.of(namespace, sweep)
        rows = {row.get("name"): row for row in book.data.get("trials") or []}
        views = []
        for index, parameters in enumerate(trial_parameters(spec)):
            name = trial_name(sweep, index)
            trial = known.get(name)
            if trial is not None:
                status = trial.get("status") or {}
                phase = status.get("phase") or "Pending"
                objective = (status.get("results") or {}).get(spec.objective.metric)
                snapshot = (status.get("provenance") or {}).get("resultSnapshot")
                views.append(TrialView(name, parameters, phase, trial_history(trial), objective, snapshot))
                continue
            row = rows.get(name) or {}
            phase = row.get("phase") if row.get("phase") in FINAL_PHASES else None
            views.append(TrialView(name, parameters, phase, (), row.get("objective"), row.get("snapshot")))
        return views

    async def _trials(self, body: Mapping[str, Any], book: StatusBook, spec: LaneSweepSpec) -> float | None:
        meta = body["metadata"]
        namespace, sweep = meta["namespace"], meta["name"]
        if book.phase != SweepPhase.RUNNING.value:
            self._enter(book, SweepPhase.RUNNING, f"running {trial_count(spec)} trial(s) on clones of VolumeSnapshot "
                                                  f"{book.data.get('datasetSnapshot')}")
        views = self.views(namespace, sweep, spec, book)
        known = self.trials.of(namespace, sweep)
        for decision in to_stop(spec, views):
            trial = known.get(decision.trial) or {}
            if STOP_ANNOTATION in ((trial.get("metadata") or {}).get("annotations") or {}):
                continue
            message = decision.message(spec.val_metric)
            patched = await self.kube.patch(object_path(API_VERSION, PLURAL, namespace, decision.trial),
                                            {"metadata": {"annotations": {STOP_ANNOTATION: message}}})
            self.trials.put(patched)
            book.event("Normal", "TrialStopped", f"{decision.trial}: {message}")
        snapshot = book.data.get("datasetSnapshot")
        direct = spec.template.dataset.from_snapshot is not None
        created = []
        for view in next_trials(spec, views):
            index = int(view.name.rsplit("-", 1)[1])
            trial = await self._create_trial(body, spec, index, view.parameters, None if direct else snapshot,
                                             (book.data.get("mlflow") or {}).get("runId"))
            self.trials.put(trial)
            created.append(view.name)
        if created:
            book.event("Normal", "TrialsCreated", f"created {', '.join(created)}")
            views = self.views(namespace, sweep, spec, book)
        await self._finish_if_done(body, book, spec, views)
        return None if book.phase in SWEEP_TERMINAL else self.config.resync_seconds

    async def _create_trial(self, body: Mapping[str, Any], spec: LaneSweepSpec, index: int,
                            parameters: Mapping[str, Any], snapshot: str | None,
                            parent: str | None = None) -> dict[str, Any]:
        meta = body["metadata"]
        name = trial_name(meta["name"], index)
        trial = trial_spec(spec, parameters, snapshot)
        manifest = {
            "apiVersion": API_VERSION, "kind": "LaneExperiment",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {"app.kubernetes.io/name": "lanex", "app.kubernetes.io/managed-by": builders.MANAGED_BY,
                                    "app.kubernetes.io/component": "trial", SWEEP_LABEL: meta["name"]},
                         "annotations": {TRIAL_PARAMETERS_ANNOTATION: json.dumps(dict(parameters), sort_keys=True),
                                         **({MLFLOW_PARENT_ANNOTATION: parent} if parent else {})}},
            "spec": trial.model_dump(mode="json", by_alias=True, exclude_unset=True),
        }
        kopf.adopt(manifest, owner=dict(body))
        path = object_path(API_VERSION, PLURAL, meta["namespace"])
        try:
            return await self.kube.create(path, manifest)
        except KubeError as exc:
            if not exc.already_exists:
                raise
            return await self.kube.get(object_path(API_VERSION, PLURAL, meta["namespace"], name))

    async def _finish_if_done(self, body: Mapping[str, Any], book: StatusBook, spec: LaneSweepSpec,
                              views: list[TrialView]) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"]
        rows = {row.get("name"): row for row in book.data.get("trials") or []}
        done = all(view.final for view in views)
        deleted: set[str] = {name for name, row in rows.items() if row.get("deleted")}
        if done:
            keep = retained(spec, views)
            for view in views:
                if view.name in keep or view.name in deleted:
                    continue
                path = object_path(API_VERSION, PLURAL, namespace, view.name)
                # The trial's own finalizer deletes its restored volume and its snapshots.
                if await self.kube.get_or_none(path) is not None:
                    await self.kube.patch(path, {"spec": {"retention": DELETE_ALL}})
                    await self.kube.delete(path)
                deleted.add(view.name)
            if deleted:
                book.event("Normal", "TrialsDeleted", clip(f"retention keeps the best {spec.retention.keep_best}: "
                                                           f"deleted {', '.join(sorted(deleted))} with their volumes "
                                                           f"and snapshots"))
        book.set("trials", [self._row(spec, view, rows.get(view.name), view.name in deleted) for view in views])
        book.set("counts", counts(views))
        best = best_trial(spec, views)
        if best is not None:
            book.set("bestTrial", {k: v for k, v in {"name": best.name, "parameters": dict(best.parameters),
                                                     "objective": best.objective, "snapshot": best.snapshot}.items()
                                   if v is not None})
        if not done:
            return
        book.set("completionTime", book.now_text())
        if best is None:
            self._fail(book, "AllTrialsFailed", "no trial succeeded")
            return
        message = (f"sweep succeeded: best trial {best.name} ({', '.join(f'{k}={v}' for k, v in best.parameters.items())}),"
                   f" {spec.objective.metric} {best.objective:.4f}")
        book.set("phase", SweepPhase.SUCCEEDED.value)
        book.set("message", message)
        book.set_condition("Succeeded", "True", "Succeeded", message)
        book.set_condition("Failed", "False", "Succeeded", message)
        book.event("Normal", "Succeeded", message)

    def _row(self, spec: LaneSweepSpec, view: TrialView, previous: Mapping[str, Any] | None,
             deleted: bool) -> dict[str, Any]:
        row = dict(previous or {})
        row.update({"name": view.name, "parameters": dict(view.parameters), "phase": view.phase or "Pending"})
        if view.history:
            last = view.history[-1]
            row["progress"] = f"{max(int(h['epoch']) for h in view.history)}/{spec.template.training.epochs}"
            if isinstance(last.get(spec.val_metric), (int, float)):
                row["valMetric"] = float(last[spec.val_metric])
        for key, value in (("objective", view.objective), ("snapshot", view.snapshot)):
            if value is not None:
                row[key] = value
        if view.phase == "Stopped":
            row["reason"] = "EarlyStopped"
        elif view.phase == "Failed":
            row.setdefault("reason", "Failed")
        if deleted:
            row["deleted"] = True
        return row

    # ---- moves

    def _enter(self, book: StatusBook, phase: SweepPhase, message: str) -> None:
        if book.phase == phase.value:
            return
        book.set("phase", phase.value)
        book.set("message", message)
        book.event("Normal", phase.value, message)

    def _fail(self, book: StatusBook, reason: str, message: str) -> None:
        if not book.is_true("DatasetReady") and book.condition("DatasetReady") is not None:
            book.set_condition("DatasetReady", "False", reason, message)
        book.set("phase", SweepPhase.FAILED.value)
        book.set("reason", reason)
        book.set("message", message)
        book.set_condition("Failed", "True", reason, message)
        book.set_condition("Succeeded", "False", reason, message)
        book.set("completionTime", book.now_text())
        book.event("Warning", reason, message)

    async def _child(self, kind: ChildKind, namespace: str, name: str, fresh: bool = False) -> dict[str, Any] | None:
        return await read_child(self.kube, self.cache, kind, namespace, name, fresh)

    async def _create(self, kind: ChildKind, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await create_child(self.kube, self.cache, kind, manifest)


async def release_sweep(kube: Kube, body: Mapping[str, Any]) -> str:
    """The sweep's finalizer: with `retention.dataset: Delete` its dataset PVC and snapshot go (the trials and
    the prepare Job go with the sweep through their owner references; each trial applies its own retention).
    A dataset snapshot that a not-yet-bound claim is still being restored from is kept."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    try:
        spec = parse_sweep_spec(json.loads((meta.get("annotations") or {}).get(SWEEP_SPEC_ANNOTATION) or "null")
                                or body.get("spec"))
    except (InvalidSpecError, ValueError):
        return "kept the dataset (the spec is unreadable: Retain)"
    status = body.get("status") or {}
    if spec.retention.dataset != "Delete":
        return "kept the dataset (retention.dataset: Retain)"
    deleted, kept = [], []
    claim = status.get("datasetClaim")
    if claim and spec.template.dataset.existing_claim is None:
        if await kube.delete(object_path(PVC.api_version, PVC.plural, namespace, claim)) is not None:
            deleted.append(f"PersistentVolumeClaim {claim}")
    snapshot = status.get("datasetSnapshot")
    if snapshot and spec.template.dataset.from_snapshot is None:
        claims = await kube.list(object_path(PVC.api_version, PVC.plural, namespace))
        restoring = [c["metadata"]["name"] for c in claims
                     if ((c.get("spec") or {}).get("dataSource") or {}).get("name") == snapshot
                     and (c.get("status") or {}).get("phase") != "Bound"]
        if restoring:
            kept.append(f"VolumeSnapshot {snapshot} (still being restored into {', '.join(restoring)})")
        elif await kube.delete(object_path(SNAPSHOT.api_version, SNAPSHOT.plural, namespace, snapshot)) is not None:
            deleted.append(f"VolumeSnapshot {snapshot}")
    parts = (["deleted " + ", ".join(deleted)] if deleted else []) + (["kept " + ", ".join(kept)] if kept else [])
    return "; ".join(parts) or "nothing to release"
