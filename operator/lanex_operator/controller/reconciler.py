"""The LaneExperiment lifecycle: one idempotent pass that looks at the world and takes the next step.

Why it exists: this is the operator's decision logic, kept apart from kopf's wiring (`handlers`).
A pass reads the experiment (spec and the status the operator wrote) and its children (from the
watch cache, else the API), then walks the steps of TR-4896 in order:

    Preflight -> dataset PVC Bound -> prepare Job (skipped for restores and prepared claims)
    -> PV shared ReadWriteMany -> [volume moved to the training service level] -> MPIJob succeeded
    (results read) -> [volume moved back] -> VolumeSnapshot ready -> Succeeded, or Failed with a reason

Each step that is already done is skipped; each step that is not creates its child under a
deterministic name (create first: an existing one answers AlreadyExists and is read, never
duplicated) and returns how long to wait. Everything a pass learns is written in one status patch
when it stops to wait; a crash before that write loses nothing, because the next pass derives the
same facts from the children. The only non-deterministic name, the snapshot's timestamp, is written
to status before the snapshot is created, so a restart at any moment creates exactly one of each
child. An Event is posted for every phase transition and every warning.

Storage tier (`spec.storage`, TR-4896's pool change): the two bracketed steps are `tier_steps`;
this module only says when they run (right before the MPIJob is created, once it finished, and
before an experiment is failed) and hands them its status writer and child reader.

Stalls: while the MPIJob runs, the training step compares `status.progress` (written by the
progress daemon, `controller.progress`) with `spec.training.stallTimeoutSeconds` and sets the
`Stalled` condition (with `stallAction: Restart`, deletes the launcher pod: mpi-operator's launcher
Job makes a new one, which resumes from the last checkpoint).
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

from lanex_operator.controller import builders, desired
from lanex_operator.api.models import (
    STOP_ANNOTATION,
    API_VERSION,
    PLURAL,
    ChildNames,
    ConditionType,
    FailureReason,
    InvalidSpecError,
    LaneExperimentSpec,
    Phase,
    Provenance,
    Results,
    parse_spec,
)
from lanex_operator.controller.children import JOB, MPIJOB, PVC, SNAPSHOT, ChildCache, ChildKind, create_child, read_child
from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.grants import CHART_VALUES, DELETE_LAUNCHER_PODS_VARIABLE
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.controller.metrics import OperatorMetrics
from lanex_operator.plan.defaults import ClusterDefaults
from lanex_operator.plan.steps import FROM_SCRATCH_REASON, ExperimentPlan, TrackingContext, plan_for
from lanex_operator.plan.sweep import tracking_context
from lanex_operator.controller.preflight import Preflight
from lanex_operator.controller.progress import LAUNCHER_SELECTOR, StallVerdict, judge_stall
from lanex_operator.controller.status import MESSAGE_LIMIT, StatusBook, clip, parse_utc
from lanex_operator.controller.tier_steps import StorageTiering, TierSteps
from lanex_operator.controller.diagnosis import WaitDiagnosis
from lanex_operator.controller.waits import STUCK_REASONS

PREPARED_ANNOTATION = "lanex.dev/prepared"  # on a PVC: its data is prepared, skip the prepare Job
SPEC_ANNOTATION = desired.SPEC_ANNOTATION  # on the MPIJob: the spec training started with
GENERATION_ANNOTATION = desired.GENERATION_ANNOTATION  # on the MPIJob: the experiment generation of that spec
JOB_POD_SELECTOR = "batch.kubernetes.io/job-name={name}"
MPIJOB_POD_SELECTOR = "training.kubeflow.org/job-name={name}"  # its launcher and its workers
MPI_ROLE_LABEL = "training.kubeflow.org/job-role"  # launcher or worker, set by mpi-operator on its pods
STALL_REPORTED = ("RestartsExhausted", "RestartNotAllowed")  # Stalled reasons after which a stall is only reported
log = logging.getLogger("lanex.operator.reconciler")
# The results line is the launcher's last; a short, bounded tail finds it.
RESULTS_TAIL_LINES = 20
RESULTS_LIMIT_BYTES = 64 * 1024
PARSED_SPECS_KEPT = 4096  # memoized (spec, plan) entries; the oldest go first
_Parsed = tuple["tuple[LaneExperimentSpec, ExperimentPlan] | None", "InvalidSpecError | None"]

C = ConditionType
EventPoster = Callable[[Mapping[str, Any], str, str, str], None]

# The failure reason of an API error that cannot be retried, by the phase it happened in.
PHASE_FAILURES = {
    Phase.PENDING.value: FailureReason.DATASET_FAILED,
    Phase.PROVISIONING_DATASET.value: FailureReason.DATASET_FAILED,
    Phase.DOWNLOADING.value: FailureReason.DOWNLOAD_FAILED,
    Phase.SHARING_VOLUME.value: FailureReason.DATASET_FAILED,
    Phase.TRAINING.value: FailureReason.TRAINING_FAILED,
    Phase.SNAPSHOTTING.value: FailureReason.SNAPSHOT_FAILED,
}


def kopf_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event about the experiment through kopf's event poster."""
    kopf.event(dict(body), type=type_, reason=reason, message=message[:MESSAGE_LIMIT])


def _true(conditions: list[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def _never_ran(conditions: list[Mapping[str, Any]]) -> bool:
    """An MPIJob that has not run yet: no Running condition, or only the one mpi-operator sets while it is
    suspended (kept after Kueue's admission until the launcher runs)."""
    running = next((c for c in conditions if c.get("type") == "Running"), None)
    return running is None or (running.get("status") != "True" and running.get("reason") == "MPIJobSuspended")


class Reconciler:
    """Decides and takes the next step of one experiment; shared by all experiments."""

    def __init__(self, kube: Kube, cache: ChildCache, preflight: Preflight, metrics: OperatorMetrics,
                 config: OperatorConfig, post_event: EventPoster = kopf_event,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 tiering: StorageTiering | None = None, defaults: ClusterDefaults | None = None) -> None:
        self.kube = kube
        self.cache = cache
        self.preflight = preflight
        self.metrics = metrics
        self.config = config
        self.post_event = post_event
        self.now = now
        self.defaults = defaults if defaults is not None else ClusterDefaults.from_env()  # read once
        self.tiering = tiering or StorageTiering(metrics=metrics.storage_tier)
        self.tier = TierSteps(self.tiering, kube, self._child, self.flush, now, self.defaults)
        # Validating a spec and planning it was ~15 % of the operator's CPU when done on every pass.
        # Both are pure and a spec only changes with a new generation (the models are frozen).
        self._parsed: collections.OrderedDict[tuple[Any, ...], _Parsed] = collections.OrderedDict()
        # Why a waiting step waits: pods and Events read at most once per interval per child.
        self.diagnosis = WaitDiagnosis(kube, config, now)

    # ---- the pass

    async def reconcile(self, body: Mapping[str, Any], book: StatusBook) -> float | None:
        """One pass; returns seconds until the next check, or None once the experiment is finished."""
        try:
            if book.terminal:  # finished, but the last write may not have been confirmed yet
                await self.flush(body, book)
                return None
            return await self._pass(body, book)
        except KubeError as exc:
            if exc.retryable:
                self.metrics.reconcile_errors.labels(kind="retryable").inc()
                if not exc.path.endswith("/status"):
                    await self._flush_quietly(body, book)  # show how far it got while the error lasts
                raise
            self.metrics.reconcile_errors.labels(kind="permanent").inc()
            await self.tier.lower_quietly(body, book)
            reason = PHASE_FAILURES.get(book.phase or "", FailureReason.DATASET_FAILED)
            book.fail(reason, clip(f"API request failed and cannot be retried: {exc}"))
            await self.flush(body, book)
            return None
        except Exception as exc:  # noqa: BLE001  a bug, or data nothing foresaw: said once, never retried forever
            meta = body.get("metadata") or {}
            log.exception(f"{meta.get('namespace')}/{meta.get('name')}: unexpected error")
            self.metrics.reconcile_errors.labels(kind="unexpected").inc()
            message = clip(f"the operator cannot handle this experiment ({type(exc).__name__}: {exc}); it is not "
                           f"retried: delete the LaneExperiment, or report this as a lanex bug with the operator's log")
            try:
                await self.tier.lower_quietly(body, book)
                book.fail(FailureReason.RECONCILE_ERROR, message)
                await self.flush(body, book)
            except KubeError:
                raise  # the write of the failure: retried (or given up) by the daemon
            except Exception:  # noqa: BLE001  the status itself is what nothing foresaw: a fresh one replaces it
                fresh = StatusBook(None, book.generation, now=self.now)
                fresh.fail(FailureReason.RECONCILE_ERROR, message)
                await self.flush(body, fresh)
            return None

    async def _pass(self, body: Mapping[str, Any], book: StatusBook) -> float | None:
        effective = await self._effective_spec(body, book)
        if effective is None:
            await self.flush(body, book)
            return None
        spec, plan = effective
        if book.phase is None:
            self._start(book, spec, plan)
        for step in (self._preflight, self._dataset, self._prepare, self._share, self._train, self.tier.restore_after_training,
                     self._snapshot):
            wait = await step(body, book, spec, plan)
            if book.terminal:
                break
            if wait is not None:
                await self.flush(body, book)  # one status write per pass: everything it learned
                return max(0.05, min(wait, self.config.resync_seconds))
        else:
            self._finish(book)
        await self.flush(body, book)
        return None

    async def _flush_quietly(self, body: Mapping[str, Any], book: StatusBook) -> None:
        try:
            await self.flush(body, book)
        except KubeError:
            pass  # the changes stay in the book and go with the next write

    async def flush(self, body: Mapping[str, Any], book: StatusBook) -> None:
        """Write the changed status keys (one merge patch), then post Events and record metrics."""
        meta = body["metadata"]
        if book.changed:
            path = object_path(API_VERSION, PLURAL, meta["namespace"], meta["name"], "status")
            await self.kube.patch(path, book.merge_patch())
            book.written()
        for event in book.events:
            self.post_event(body, event.type, event.reason, event.message)
        book.events.clear()
        for timing in book.timings:
            self.metrics.step_seconds.labels(step=timing.step, outcome=timing.outcome).observe(timing.seconds)
        book.timings.clear()
        self.metrics.observe_phase(meta["uid"], book.phase)

    # ---- spec: validated once, frozen once training started

    async def _effective_spec(self, body: Mapping[str, Any],
                              book: StatusBook) -> tuple[LaneExperimentSpec, ExperimentPlan] | None:
        meta = body["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
        context = tracking_context(meta)
        current, problem = self._parse(("spec", namespace, name, meta.get("uid"), generation),
                                        lambda: body.get("spec"), context)
        if book.condition(C.TRAINED.value) is None:
            if problem is not None:
                book.set("observedGeneration", generation)
                if book.phase is None:
                    book.set("startTime", book.now_text())
                book.fail(FailureReason.INVALID_SPEC, clip(f"invalid spec: {problem.message}"))
                return None
            book.set("observedGeneration", generation)
            return current
        frozen, frozen_generation = await self._training_spec(namespace, name, book, context)
        if frozen is None:  # the MPIJob is gone: nothing froze the spec, use the current one if valid
            if problem is not None:
                book.fail(FailureReason.INVALID_SPEC, clip(f"invalid spec: {problem.message}"))
                return None
            return current
        if current is None or current[0] != frozen[0]:
            detail = f" (and it is invalid: {problem.message})" if problem is not None else ""
            message = clip(f"spec generation {generation} was not applied: training started with generation "
                            f"{frozen_generation}; the running MPIJob is never changed. Create a new "
                            f"LaneExperiment to run the changed spec{detail}")
            if book.set_condition(C.SPEC_CHANGE_IGNORED.value, "True", "TrainingStarted", message):
                book.event("Warning", C.SPEC_CHANGE_IGNORED.value, message)
        book.set("observedGeneration", generation)
        return frozen

    def _parse(self, key: tuple[Any, ...], raw_spec: Callable[[], Any], context: TrackingContext) -> _Parsed:
        """The validated spec and its plan (or the reason it is invalid), computed once per `key`."""
        parsed = self._parsed.get(key)
        if parsed is None:
            namespace, name = key[1], key[2]
            try:
                spec = parse_spec(raw_spec())
                parsed = ((spec, plan_for(name, namespace, spec, defaults=self.defaults, context=context)), None)
            except InvalidSpecError as exc:
                parsed = (None, exc)
            self._parsed[key] = parsed
            if len(self._parsed) > PARSED_SPECS_KEPT:
                self._parsed.popitem(last=False)
        return parsed

    async def _training_spec(self, namespace: str, name: str, book: StatusBook, context: TrackingContext,
                             ) -> tuple[tuple[LaneExperimentSpec, ExperimentPlan] | None, str]:
        """The spec training started with (annotated on the MPIJob) and its plan, with its generation."""
        mpijob_name = (book.data.get("children") or {}).get("mpiJob")
        mpijob = await self._child(MPIJOB, namespace, mpijob_name) if mpijob_name else None
        annotations = ((mpijob or {}).get("metadata") or {}).get("annotations") or {}
        if SPEC_ANNOTATION not in annotations:
            return None, ""
        text = annotations[SPEC_ANNOTATION]

        def load() -> Any:
            try:
                return json.loads(text)
            except ValueError as exc:
                raise InvalidSpecError(f"annotation {SPEC_ANNOTATION} of MPIJob {mpijob_name}: {exc}") from None

        frozen, _ = self._parse(("frozen", namespace, name, text), load, context)
        return frozen, annotations.get(GENERATION_ANNOTATION, "?")

    def _start(self, book: StatusBook, spec: LaneExperimentSpec, plan: ExperimentPlan) -> None:
        book.set("startTime", book.now_text())
        names = ChildNames(dataset_claim=plan.names.dataset_claim,
                           prepare_job=plan.names.prepare_job if plan.prepare is not None else None,
                           mpi_job=plan.names.mpijob)
        book.set("children", names.model_dump(by_alias=True, exclude_none=True, mode="json"))
        provenance = Provenance(trainer_image=plan.trainer_image, config_hash=plan.config_hash,
                                dataset_source=plan.dataset_source)
        book.set("provenance", provenance.model_dump(by_alias=True, exclude_none=True, mode="json"))
        book.set_condition(C.SUCCEEDED.value, "Unknown", "InProgress", "the experiment is running")
        book.set_condition(C.FAILED.value, "False", "InProgress", "the experiment is running")
        book.enter(Phase.PENDING, "checking that the cluster has what the experiment needs")
        if plan.train.from_scratch is not None:  # said once, when the experiment starts
            book.set_condition(C.TRAINING_FROM_SCRATCH.value, "True", FROM_SCRATCH_REASON, plan.train.from_scratch)
            book.event("Warning", C.TRAINING_FROM_SCRATCH.value, plan.train.from_scratch)

    # ---- steps: each returns None when done, else seconds to wait

    async def _preflight(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                         plan: ExperimentPlan) -> float | None:
        if book.is_true(C.PREFLIGHT.value):
            return None
        problems = await self.preflight.experiment(plan)
        if problems:
            reason = problems[0].reason if len(problems) == 1 else "MissingDependencies"
            message = clip("; ".join(problem.message for problem in problems))
            waited, limit = self._age(body, book), self.config.preflight_timeout_seconds
            if waited >= limit:
                book.fail(FailureReason.PREFLIGHT_FAILED, clip(
                    f"still missing {int(waited)}s after the experiment was created "
                    f"(LANEX_OPERATOR_PREFLIGHT_TIMEOUT_SECONDS={limit:g}): {reason}: {message}"))
                return None
            if book.set_condition(C.PREFLIGHT.value, "False", reason, message):
                book.event("Warning", reason, message)
            book.set("message", message)
            return min(self.config.preflight_retry_seconds, limit - waited)
        features = await self.preflight.mpi_operator()
        book.complete_step(C.PREFLIGHT.value, "Passed", "the APIs, classes and namespaces the experiment uses exist; "
                                                        + features.describe())
        return None

    async def _dataset(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                       plan: ExperimentPlan) -> float | None:
        if book.is_true(C.DATASET_READY.value):
            return None
        claim = plan.dataset.claim_name
        book.enter(Phase.PROVISIONING_DATASET, f"provisioning the dataset volume (PersistentVolumeClaim {claim})")
        if plan.dataset.creates_claim:
            pvc = self.cache.get(PVC, plan.namespace, claim)
            if pvc is None:
                manifest = await self._claim_manifest(body, book, spec, plan)
                if manifest is None:
                    return None if book.terminal else self.config.resync_seconds
                pvc = await self._create(PVC, manifest)
        else:
            # A user's claim carries no experiment label, so no watch event refreshes the cache:
            # read it from the API server on every pass until it is Bound.
            pvc = await self._child(PVC, plan.namespace, claim, fresh=True)
            if pvc is None:
                book.fail(FailureReason.DATASET_FAILED, f'PersistentVolumeClaim "{claim}" '
                                                        f"(spec.dataset.existingClaim.claimName) not found")
                return None
        status = pvc.get("status") or {}
        if status.get("phase") == "Bound":
            volume = (pvc.get("spec") or {}).get("volumeName", "?")
            capacity = (status.get("capacity") or {}).get("storage", "?")
            modes = ",".join(status.get("accessModes") or [])
            book.complete_step(C.DATASET_READY.value, "Bound", f"PersistentVolumeClaim {claim} is bound to "
                                                               f"PersistentVolume {volume} ({capacity}, {modes})")
            return None
        if status.get("phase") == "Lost":
            book.fail(FailureReason.DATASET_FAILED, f"PersistentVolumeClaim {claim} lost its volume")
            return None
        failure, left = await self.diagnosis.claim_unbound(book, C.DATASET_READY.value, plan.namespace, claim,
                                                           status.get("phase"))
        if failure:
            book.fail(FailureReason.DATASET_FAILED, failure)
            return None
        return left

    async def _claim_manifest(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                              plan: ExperimentPlan) -> dict[str, Any] | None:
        restore_size = None
        if plan.dataset.restore_from is not None:
            source = plan.dataset.restore_from
            snapshot = await self._child(SNAPSHOT, plan.namespace, source)
            if snapshot is None:
                book.fail(FailureReason.DATASET_FAILED, f'VolumeSnapshot "{source}" '
                                                        f"(spec.dataset.fromSnapshot.snapshotName) not found")
                return None
            status = snapshot.get("status") or {}
            if not status.get("readyToUse"):
                elapsed = book.since(C.DATASET_READY.value)
                error = (status.get("error") or {}).get("message")
                if elapsed >= self.config.dataset_bound_timeout_seconds:  # the restore waits no longer than a bind
                    book.fail(FailureReason.DATASET_FAILED, clip(
                        f"VolumeSnapshot {source} (spec.dataset.fromSnapshot.snapshotName) was not ready to use "
                        f"after {int(elapsed)}s" + (f": {error}" if error else "")))
                    return None
                book.set("message", f"waiting for VolumeSnapshot {source} to be ready to use before restoring it"
                         + (f" (the snapshot controller reports: {error})" if error else ""))
                return None
            restore_size = status.get("restoreSize")
        return desired.dataset_claim(body, spec, plan, restore_size)

    async def _prepare(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                       plan: ExperimentPlan) -> float | None:
        if book.is_true(C.DATA_PREPARED.value):
            return None
        if plan.prepare is None:
            book.complete_step(C.DATA_PREPARED.value, "Skipped", f"restored from VolumeSnapshot "
                                                                 f"{plan.dataset.restore_from}: the data is prepared")
            return None
        claim = plan.dataset.claim_name
        if not plan.dataset.creates_claim and not plan.prepare.weights_commands:  # weights may still be missing
            pvc = await self._child(PVC, plan.namespace, claim) or {}
            if ((pvc.get("metadata") or {}).get("annotations") or {}).get(PREPARED_ANNOTATION) == "true":
                book.complete_step(C.DATA_PREPARED.value, "Skipped", f"PersistentVolumeClaim {claim} is annotated "
                                                                     f"{PREPARED_ANNOTATION}=true")
                return None
        name = plan.names.prepare_job
        book.enter(Phase.DOWNLOADING, f"preparing the dataset with Job {name}")
        job = self.cache.get(JOB, plan.namespace, name)
        if job is None:  # create first: an existing Job answers AlreadyExists and is read instead
            job = await self._create(JOB, desired.prepare_job(body, spec, plan))
        conditions = (job.get("status") or {}).get("conditions")
        if _true(conditions, "Complete"):
            if plan.dataset.creates_claim:
                await self._mark_prepared(plan.namespace, claim)
            book.complete_step(C.DATA_PREPARED.value, "Completed", f"Job {name} prepared the dataset in "
                                                                   f"{plan.paths.data_root}")
            return None
        failed = _true(conditions, "Failed")
        if failed:
            detail = await self.diagnosis.pod_message(plan.namespace, JOB_POD_SELECTOR.format(name=name))
            book.fail(FailureReason.DOWNLOAD_FAILED, clip(
                f"Job {name} failed ({failed.get('reason', 'Failed')}: {failed.get('message', '')})"
                + (f"; {detail}" if detail else "")))
            return None
        failure = await self.diagnosis.pods_stuck(book, C.DATA_PREPARED.value, f"Job {name}", plan.namespace,
                                         JOB_POD_SELECTOR.format(name=name))
        if failure:
            book.fail(FailureReason.DOWNLOAD_FAILED, failure)
            return None
        return self.config.resync_seconds

    async def _mark_prepared(self, namespace: str, claim: str) -> None:
        pvc = await self._child(PVC, namespace, claim) or {}
        if ((pvc.get("metadata") or {}).get("annotations") or {}).get(PREPARED_ANNOTATION) != "true":
            patched = await self.kube.patch(object_path(PVC.api_version, PVC.plural, namespace, claim),
                                            {"metadata": {"annotations": {PREPARED_ANNOTATION: "true"}}})
            self.cache.put(PVC, patched)

    async def _share(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                     plan: ExperimentPlan) -> float | None:
        if book.is_true(C.VOLUME_SHARED.value):
            return None
        book.enter(Phase.SHARING_VOLUME, "making the dataset volume mountable by every worker (ReadWriteMany)")
        pvc = await self._child(PVC, plan.namespace, plan.dataset.claim_name) or {}
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume:
            book.fail(FailureReason.DATASET_FAILED, f"PersistentVolumeClaim {plan.dataset.claim_name} has no "
                                                    f"volumeName although it is Bound")
            return None
        path = object_path("v1", "persistentvolumes", name=volume)
        pv = await self.kube.get(path)
        modes = ",".join((pv.get("spec") or {}).get("accessModes") or [])
        if builders.pv_is_shared(pv):
            book.complete_step(C.VOLUME_SHARED.value, "AlreadyReadWriteMany",
                               f"PersistentVolume {volume} is already ReadWriteMany ({modes})")
            return None
        await self.kube.patch(path, builders.pv_rwx_patch())
        book.complete_step(C.VOLUME_SHARED.value, "PatchedToReadWriteMany",
                           f"PersistentVolume {volume} was patched from {modes} to ReadWriteMany")
        return None

    async def _train(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                     plan: ExperimentPlan) -> float | None:
        if book.is_settled(C.TRAINED.value):
            return None  # False only when a snapshot on failure is still to be taken
        name = plan.names.mpijob
        stop = ((body["metadata"].get("annotations") or {}).get(STOP_ANNOTATION))
        if stop:
            return await self._stop(body, book, spec, plan, stop)
        book.enter(Phase.TRAINING, f"training with MPIJob {name} ({plan.train.workers} workers)")
        mpijob = self.cache.get(MPIJOB, plan.namespace, name)
        if mpijob is None:
            await self.tier.raise_for_training(body, book, spec, plan)
            features = await self.preflight.mpi_operator()
            mpijob = await self._create(MPIJOB, desired.training_job(
                body, spec, plan, launcher_creation_policy=features.launcher_creation_policy))
        if plan.train.scheduler == "kueue":
            queued = self._queued(book, mpijob, plan)
            if queued is not None:
                limit = plan.train.queue_timeout_seconds
                if limit is None:
                    return queued
                waited = book.since(C.QUEUED.value)
                if waited >= limit:
                    return await self._queue_timeout(body, book, spec, plan, waited, limit)
                return min(queued, limit - waited)
        conditions = (mpijob.get("status") or {}).get("conditions")
        if _true(conditions, "Succeeded") or _true(conditions, "Failed"):
            self._end_stall(book, plan)
        if _true(conditions, "Succeeded"):
            results, note = await self._results(plan.namespace, name)
            if results is not None:
                book.set("results", results)
            accuracy = f", accuracy {results['accuracy']:.4f}" if results and "accuracy" in results else ""
            book.complete_step(C.TRAINED.value, "Succeeded", f"MPIJob {name} succeeded{accuracy}{note}")
            return None
        failed = _true(conditions, "Failed")
        if failed:
            detail = await self.diagnosis.pod_message(plan.namespace, LAUNCHER_SELECTOR.format(name=name))
            reason = (FailureReason.TIMEOUT if failed.get("reason") in ("DeadlineExceeded", "MPIJobDeadlineExceeded")
                      else FailureReason.TRAINING_FAILED)
            message = clip(f"MPIJob {name} failed ({failed.get('reason', 'Failed')}: {failed.get('message', '')})"
                            + (f"; {detail}" if detail else ""))
            return await self._training_failed(body, book, spec, plan, reason, message)
        wait = self.config.resync_seconds
        if not conditions:  # no controller acted on it yet: refused, or no mpi-operator runs
            waited, limit = self._age(mpijob, book), self.config.mpijob_condition_timeout_seconds
            if waited >= limit:
                return await self._training_failed(body, book, spec, plan, FailureReason.TRAINING_FAILED,
                                                   await self._no_condition_message(plan.namespace, name, waited))
            wait = min(wait, limit - waited)
            await self.diagnosis.show_warning(book, C.TRAINED.value, plan.namespace, MPIJOB.kind, name, waited,
                                     f"MPIJob {name} has no condition")
        failure = await self.diagnosis.pods_stuck(book, C.TRAINED.value, f"MPIJob {name}", plan.namespace,
                                                  MPIJOB_POD_SELECTOR.format(name=name))
        if failure:
            return await self._training_failed(body, book, spec, plan, FailureReason.TRAINING_FAILED, failure)
        if conditions and _never_ran(conditions):
            # Acted on, never running: its launcher has not started (under WaitForWorkersReady, not before
            # every worker is Ready). Stuck pods say why above; this bounds what they do not explain.
            waited, limit = self._waiting_to_start(mpijob, book), self.config.training_start_timeout_seconds
            if waited >= limit:
                return await self._training_failed(body, book, spec, plan, FailureReason.TRAINING_FAILED, clip(
                    f"MPIJob {name} did not start training {int(waited)}s after it was created "
                    f"(LANEX_OPERATOR_TRAINING_START_TIMEOUT_SECONDS={limit:g}): "
                    + await self._start_blocker(book, plan)))
            wait = min(wait, limit - waited)
            if waited >= self.config.stuck_check_seconds and (book.condition(C.TRAINED.value) or {}).get(
                    "reason") not in STUCK_REASONS:
                message = clip(f"MPIJob {name}: " + await self._start_blocker(book, plan))
                if book.set_condition(C.TRAINED.value, "Unknown", "WaitingForWorkers", message):
                    log.info("%s/%s: %s", plan.namespace, plan.name, message)
        stuck = (book.condition(C.TRAINED.value) or {}).get("reason") in STUCK_REASONS
        running = _true(conditions, "Running")
        if running and not stuck:
            book.set_condition(C.TRAINED.value, "Unknown", "Running",
                               f"MPIJob {name} is running ({plan.train.workers} workers, "
                               f"{plan.train.processes} processes)")
            return min(wait, await self._watch_stall(body, book, spec, plan, mpijob, running))
        return wait

    async def _training_failed(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                               plan: ExperimentPlan, reason: FailureReason, message: str) -> None:
        """Training ended without success: Trained=False (a snapshot on failure is still taken), else Failed."""
        if plan.snapshot is not None and plan.snapshot.on_failure:
            book.set_condition(C.TRAINED.value, "False", reason.value, message)
            book.event("Warning", reason.value, message)
            return None
        await self.tier.lower(body, book, spec, plan)  # before Failed: a finished experiment is not resumed
        book.fail(reason, message)
        return None

    def _waiting_to_start(self, mpijob: Mapping[str, Any], book: StatusBook) -> float:
        """Seconds an MPIJob has waited to start running: since its creation, or since Kueue admitted it."""
        waited = self._age(mpijob, book)
        queued = book.condition(C.QUEUED.value)
        if queued is not None and queued.get("status") == "False":
            waited = min(waited, book.since(C.QUEUED.value))
        return waited

    async def _start_blocker(self, book: StatusBook, plan: ExperimentPlan) -> str:
        """What an MPIJob that has not started waits for, from its pods (the same throttled read as stuck pods)."""
        pods = await self.diagnosis.pods(plan.namespace, MPIJOB_POD_SELECTOR.format(name=plan.names.mpijob))
        roles = [((pod.get("metadata") or {}).get("labels") or {}).get(MPI_ROLE_LABEL) for pod in pods]
        ready = sum(1 for pod, role in zip(pods, roles) if role == "worker" and _true(
            (pod.get("status") or {}).get("conditions"), "Ready"))
        launcher = "a launcher pod exists but has not run" if "launcher" in roles else \
            "no launcher pod yet (mpi-operator creates it once every worker is Ready under WaitForWorkersReady)"
        return f"{ready} of {plan.train.workers} workers Ready, {launcher}"

    async def _queue_timeout(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                             plan: ExperimentPlan, waited: float, limit: int) -> None:
        """Kueue did not admit the MPIJob in time: delete it (so it is never admitted later), then Failed."""
        name, queue = plan.names.mpijob, plan.train.kueue_queue
        await self.kube.delete(object_path(MPIJOB.api_version, MPIJOB.plural, plan.namespace, name))
        message = clip(f"Kueue did not admit MPIJob {name} from LocalQueue {queue} within "
                       f"spec.scheduler.queueTimeoutSeconds={limit} (queued for {int(waited)}s); the MPIJob was "
                       f"deleted. Check the ClusterQueue's quota (kubectl get clusterqueue) or raise the bound")
        book.set_condition(C.QUEUED.value, "False", FailureReason.QUEUE_TIMEOUT.value, message)
        await self.tier.lower(body, book, spec, plan)
        book.fail(FailureReason.QUEUE_TIMEOUT, message)

    def _age(self, obj: Mapping[str, Any], book: StatusBook) -> float:
        """Seconds since the object was created (the apiserver's clock), else since its step began."""
        created = parse_utc((obj.get("metadata") or {}).get("creationTimestamp"))
        return book.since(C.TRAINED.value) if created is None else max(0.0, (self.now() - created).total_seconds())

    async def _no_condition_message(self, namespace: str, name: str, waited: float) -> str:
        """Why an MPIJob got no condition: its controller's Warning Event (mpi-operator's ValidationError), else
        that none may be running."""
        warning = await self.diagnosis.quiet(self.diagnosis.warning_event(namespace, MPIJOB.kind, name), None)
        limit = f"LANEX_OPERATOR_MPIJOB_CONDITION_TIMEOUT_SECONDS={self.config.mpijob_condition_timeout_seconds:g}"
        if warning is not None:
            return clip(f"MPIJob {name} was not started by its controller ({int(waited)}s without a condition, "
                        f"{limit}): {warning.get('reason', 'Warning')}: {warning.get('message', '')}")
        return clip(f"MPIJob {name} has no condition {int(waited)}s after it was created ({limit}): no controller "
                    f"acted on it and none reported why; the Kubeflow mpi-operator may not be running (or may not "
                    f"watch namespace {namespace})")

    def _queued(self, book: StatusBook, mpijob: Mapping[str, Any], plan: ExperimentPlan) -> float | None:
        """Kueue admits an MPIJob by unsuspending it; until then `Queued` says for how long it has waited
        (in steps of `queued_message_seconds`, so a long queue costs one status write per step). Returns
        the seconds to the next step while queued, None once admitted."""
        name, queue = plan.names.mpijob, plan.train.kueue_queue
        suspended = bool(((mpijob.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
        if not suspended:
            if book.is_true(C.QUEUED.value):
                waited = int(book.since(C.QUEUED.value))
                book.set_condition(C.QUEUED.value, "False", "Admitted",
                                   f"Kueue admitted MPIJob {name} from LocalQueue {queue} after {waited}s")
            return None
        if not book.is_true(C.QUEUED.value):
            message = f"MPIJob {name} waits in Kueue LocalQueue {queue} for admission"
            book.set_condition(C.QUEUED.value, "True", "WaitingForAdmission", message + " (queued for 0s)")
            book.event("Normal", C.QUEUED.value, message)
        step = self.config.queued_message_seconds
        waited = book.since(C.QUEUED.value)
        shown = int(waited // step * step)
        book.set_condition(C.QUEUED.value, "True", "WaitingForAdmission",
                           f"MPIJob {name} waits in Kueue LocalQueue {queue} for admission (queued for {shown}s)")
        book.set("message", f"queued in Kueue LocalQueue {queue} for {shown}s")
        return step - (waited % step)

    async def _stop(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec, plan: ExperimentPlan,
                    why: str) -> float | None:
        """Early stop (the `lanex.dev/stop` annotation): delete the MPIJob, then Stopped (after the snapshot on
        failure, when the spec asks for one: it keeps the checkpoints and logs)."""
        name = plan.names.mpijob
        await self.kube.delete(object_path(MPIJOB.api_version, MPIJOB.plural, plan.namespace, name))
        message = clip(f"training stopped early, MPIJob {name} deleted: {why}")
        reason = FailureReason.EARLY_STOPPED
        self._end_stall(book, plan)
        if plan.snapshot is not None and plan.snapshot.on_failure:
            book.set_condition(C.TRAINED.value, "False", reason.value, message)
            return None
        await self.tier.lower(body, book, spec, plan)
        book.stop(reason, message)
        return None

    # ---- stalls: no new progress while the MPIJob runs

    async def _watch_stall(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                           plan: ExperimentPlan, mpijob: Mapping[str, Any], running: Mapping[str, Any]) -> float:
        """Set or clear `Stalled`; returns how long until a stall could next be declared."""
        timeout = spec.training.stall_timeout_seconds
        current = book.condition(C.STALLED.value)
        gauges = not body["metadata"].get("deletionTimestamp")  # a deleted experiment's series are gone
        verdict = judge_stall((body.get("status") or {}).get("progress"), running.get("lastTransitionTime"),
                              current, self.now(), timeout)
        if not verdict.stalled:
            if current is not None and current.get("status") == "True":
                message = f"training progresses again ({self._last_step(verdict)})"
                book.set_condition(C.STALLED.value, "False", "ProgressResumed", message)
                book.event("Normal", "ProgressResumed", message)
            if gauges:
                self.metrics.training.set_stalled(plan.namespace, plan.name, False)
            return max(0.05, min(self.config.resync_seconds, verdict.seconds_left))
        if gauges:
            self.metrics.training.set_stalled(plan.namespace, plan.name, True)
        if current is not None and current.get("status") == "True" and current.get("reason") in STALL_REPORTED:
            return self.config.resync_seconds  # a stall that cannot be restarted was said once; it stays until progress
        message = clip(verdict.describe(timeout))
        if book.set_condition(C.STALLED.value, "True", "NoProgress", message):
            book.event("Warning", C.STALLED.value, message)
        if spec.training.stall_action == "Restart":
            await self.flush(body, book)  # Stalled=True is in status before the launcher goes
            await self._restart_launcher(book, plan, mpijob, verdict, timeout)
        return self.config.resync_seconds

    @staticmethod
    def _last_step(verdict: StallVerdict) -> str:
        last = verdict.last
        return "no progress yet" if last is None else f"epoch {last.epoch}/{last.epochs}, step {last.step}/{last.steps}"

    async def _restart_launcher(self, book: StatusBook, plan: ExperimentPlan, mpijob: Mapping[str, Any],
                                verdict: StallVerdict, timeout: int) -> None:
        """Delete the running launcher pod: the launcher Job (mpi-operator v0.3+) starts a new one, which
        counts against `backoffLimit`; so a launcher whose retries are used up is left alone."""
        name = plan.names.mpijob
        launcher = (((mpijob.get("status") or {}).get("replicaStatuses") or {}).get("Launcher") or {})
        failed, limit = int(launcher.get("failed") or 0), plan.train.backoff_limit
        if failed >= limit:
            message = clip(f"{verdict.describe(timeout)}; not restarted: the launcher Job of MPIJob {name} has used "
                           f"its backoffLimit ({failed} of {limit} retries)")
            if book.set_condition(C.STALLED.value, "True", "RestartsExhausted", message):
                book.event("Warning", "RestartsExhausted", message)
            return
        if not self.preflight.grants.delete_launcher_pods:
            self._restart_refused(book, verdict, timeout, f"the operator is not allowed to delete pods (chart value "
                                  f"{CHART_VALUES[DELETE_LAUNCHER_PODS_VARIABLE]} is false: set it to true to grant "
                                  f"it, or set stallAction None)")
            return
        pods = await self.kube.list(object_path("v1", "pods", plan.namespace),
                                    label_selector=LAUNCHER_SELECTOR.format(name=name))
        live = sorted(p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running"))
        for pod in live:
            try:
                await self.kube.delete(object_path("v1", "pods", plan.namespace, pod))
            except KubeError as error:
                if error.status != 403:
                    raise
                self._restart_refused(book, verdict, timeout, f"deleting launcher pod {pod} was forbidden "
                                      f"({error.message}): the operator's RBAC lacks delete on pods (chart value "
                                      f"{CHART_VALUES[DELETE_LAUNCHER_PODS_VARIABLE]})")
                return
        message = clip(f"{verdict.describe(timeout)}; deleted launcher pod {', '.join(live) or '(none running)'}: "
                       f"the launcher Job starts a new one that resumes from the last checkpoint (retry "
                       f"{failed + 1} of {limit})")
        book.set_condition(C.STALLED.value, "False", "LauncherRestarted", message)
        book.event("Warning", "LauncherRestarted", message)

    @staticmethod
    def _restart_refused(book: StatusBook, verdict: StallVerdict, timeout: int, why: str) -> None:
        """stallAction Restart, but the operator may not delete the pod: said once, and the stall only reported."""
        message = clip(f"{verdict.describe(timeout)}; not restarted: {why}")
        if book.set_condition(C.STALLED.value, "True", "RestartNotAllowed", message):
            book.event("Warning", "RestartNotAllowed", message)

    def _end_stall(self, book: StatusBook, plan: ExperimentPlan) -> None:
        """Training ended: a Stalled=True condition no longer applies."""
        current = book.condition(C.STALLED.value)
        if current is not None and current.get("status") == "True":
            book.set_condition(C.STALLED.value, "False", "TrainingEnded", "the MPIJob finished")

    async def _snapshot(self, body: Mapping[str, Any], book: StatusBook, spec: LaneExperimentSpec,
                        plan: ExperimentPlan) -> float | None:
        if plan.snapshot is None:
            book.set_condition(C.SNAPSHOTTED.value, "False", "Disabled", "spec.snapshot.enabled is false")
            return None
        if book.is_true(C.SNAPSHOTTED.value):
            return None
        book.enter(Phase.SNAPSHOTTING, f"snapshotting PersistentVolumeClaim {plan.snapshot.source_claim}")
        records = book.data.get("snapshots") or []
        pending = next((r for r in reversed(records) if not r.get("readyToUse")), None)
        if pending is None or await self._child(SNAPSHOT, plan.namespace, pending["name"]) is None:
            chosen = await self._snapshot_plan(book, plan)  # before creating: the class of the claim's CSI driver
            if chosen is None:
                elapsed, limit = book.since(C.SNAPSHOTTED.value), float(plan.snapshot.ready_timeout_seconds)
                message = str((book.condition(C.SNAPSHOTTED.value) or {}).get("message", ""))
                if elapsed >= limit:
                    book.fail(FailureReason.SNAPSHOT_FAILED, clip(f"no snapshot taken after {int(elapsed)}s: {message}"))
                    return None
                return min(self.config.preflight_retry_seconds, limit - elapsed)
            plan = chosen
        if pending is None:
            manifest = desired.snapshot(body, spec, plan, self.now())
            name = manifest["metadata"]["name"]
            self._record_snapshot(book, name, {"name": name, "readyToUse": False})
            await self.flush(body, book)  # the name is in status before the snapshot exists
            snapshot = await self._create(SNAPSHOT, manifest)
        else:
            name = pending["name"]
            snapshot = self.cache.get(SNAPSHOT, plan.namespace, name)
            if snapshot is None:
                manifest = desired.snapshot(body, spec, plan, self.now())
                manifest["metadata"]["name"] = name
                snapshot = await self._create(SNAPSHOT, manifest)
        status = snapshot.get("status") or {}
        if status.get("readyToUse"):
            self._record_snapshot(book, name, {k: v for k, v in {
                "name": name, "contentName": status.get("boundVolumeSnapshotContentName"), "readyToUse": True,
                "restoreSize": status.get("restoreSize"), "creationTime": status.get("creationTime")}.items()
                if v is not None})
            book.set("provenance", dict(book.data.get("provenance") or {}, resultSnapshot=name))
            self.metrics.snapshots_taken.inc()
            book.complete_step(C.SNAPSHOTTED.value, "Ready", f"VolumeSnapshot {name} is ready to use "
                                                             f"(restoreSize {status.get('restoreSize', '?')})")
            return None
        error = (status.get("error") or {}).get("message")
        if error:
            reported = {k: v for k, v in (status.get("error") or {}).items() if k in ("message", "time")}
            self._record_snapshot(book, name, {"name": name, "readyToUse": False, "error": reported})
            book.set_condition(C.SNAPSHOTTED.value, "Unknown", "SnapshotError",
                               clip(f"the snapshot controller reports for VolumeSnapshot {name}: {error}"))
        elapsed, limit = book.since(C.SNAPSHOTTED.value), float(plan.snapshot.ready_timeout_seconds)
        if elapsed >= limit:
            book.fail(FailureReason.SNAPSHOT_FAILED, clip(f"VolumeSnapshot {name} was not ready to use after "
                                                           f"{int(elapsed)}s" + (f": {error}" if error else "")))
            return None
        return limit - elapsed

    async def _snapshot_plan(self, book: StatusBook, plan: ExperimentPlan) -> ExperimentPlan | None:
        """`plan` with the VolumeSnapshotClass its snapshot uses (preflight.snapshot_class), or None (and the
        reason in the Snapshotted condition) when no class fits the claim's CSI driver."""
        assert plan.snapshot is not None
        klass, problem = await self.preflight.snapshot_class(plan)
        if problem is not None:
            if book.set_condition(C.SNAPSHOTTED.value, "Unknown", problem.reason, problem.message):
                book.event("Warning", problem.reason, problem.message)
            return None
        if klass is None or klass == plan.snapshot.volume_snapshot_class_name:
            return plan
        return dataclasses.replace(plan, snapshot=dataclasses.replace(plan.snapshot, volume_snapshot_class_name=klass))

    def _record_snapshot(self, book: StatusBook, name: str, record: dict[str, Any]) -> None:
        """Add or replace the status record of snapshot `name` (new lists: the book owns what it is given)."""
        records = [r for r in book.data.get("snapshots") or [] if r.get("name") != name] + [record]
        book.set("snapshots", records)
        book.set("children", dict(book.data.get("children") or {}, snapshots=[r["name"] for r in records]))

    def _finish(self, book: StatusBook) -> None:
        trained = book.condition(C.TRAINED.value) or {}
        if trained.get("status") == "False" and trained.get("reason") == FailureReason.EARLY_STOPPED.value:
            book.stop(FailureReason.EARLY_STOPPED, str(trained.get("message", "")))
            return
        if trained.get("status") == "False":
            book.fail(FailureReason(trained.get("reason", FailureReason.TRAINING_FAILED.value)),
                      str(trained.get("message", "")))
            return
        results = book.data.get("results") or {}
        snapshot = (book.data.get("provenance") or {}).get("resultSnapshot")
        parts = [f"accuracy {results['accuracy']:.4f}" if "accuracy" in results else "trained"]
        if snapshot:
            parts.append(f"snapshot {snapshot}")
        book.succeed("experiment succeeded: " + ", ".join(parts))

    # ---- reading and creating children

    async def _child(self, kind: ChildKind, namespace: str, name: str, fresh: bool = False) -> dict[str, Any] | None:
        return await read_child(self.kube, self.cache, kind, namespace, name, fresh)

    async def _create(self, kind: ChildKind, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await create_child(self.kube, self.cache, kind, manifest)

    async def _results(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The results JSON the launcher wrote as its termination message, as status.results."""
        pods = await self.kube.list(object_path("v1", "pods", namespace),
                                    label_selector=LAUNCHER_SELECTOR.format(name=name))
        messages, succeeded = [], []
        for pod in pods:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                if terminated.get("exitCode") == 0:
                    succeeded.append((terminated.get("finishedAt") or "", pod["metadata"]["name"]))
                    if terminated.get("message"):
                        messages.append((terminated.get("finishedAt") or "", terminated["message"]))
        if messages:
            text = sorted(messages)[-1][1]
        elif succeeded:
            # No termination message (a kubelet that could not read the file, or one that keeps none):
            # `lanex launch` also prints the results as its last line, so the log's tail has them.
            text = await self._results_line_from_log(namespace, sorted(succeeded)[-1][1])
            if text is None:
                return None, " (the launcher left no results message, and its log ends without results)"
        else:
            return None, " (the launcher left no results message)"
        try:
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("results"), dict):
                data = data["results"]
            results = Results.model_validate(data)
        except ValueError as exc:
            return None, clip(f" (the launcher's results message is not valid results JSON: {exc})")
        return results.model_dump(by_alias=True, exclude_none=True, mode="json"), ""

    async def _results_line_from_log(self, namespace: str, pod: str) -> str | None:
        """The last line of a launcher's log tail that is a JSON object (a bounded read)."""
        try:
            text = await self.kube.text(object_path("v1", "pods", namespace, pod, "log"),
                                        params={"tailLines": str(RESULTS_TAIL_LINES), "limitBytes": str(RESULTS_LIMIT_BYTES)})
        except KubeError as exc:
            log.warning("reading the results from %s/%s's log failed: %s", namespace, pod, exc)
            return None
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                return line
        return None
