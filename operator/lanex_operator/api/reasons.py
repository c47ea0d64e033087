"""What every condition type and reason the operator writes means, and what to do about it.

Why it exists: a condition's reason is only useful when its reader knows what to do next. This typed
table is the one place that says so; the docs site's reference page (tools/docs/ref_conditions.py) is
generated from it at build time, and tests/test_docs_reference.py checks it against the reasons the
controller, the preflight checks and the storage-tier steps actually write (every reason they write
is here, every reason here is written), so the page cannot drift from the code.

Plain strings, not the controller's enums: `api` imports nothing above it, and the check above is
what ties the two together.
"""

from __future__ import annotations

import dataclasses

from lanex_operator.api.status import ConditionType, FailureReason

EXPERIMENT = "LaneExperiment"
SWEEP = "LaneSweep"
BOTH = (EXPERIMENT, SWEEP)
EVENT = "Event"  # a reason that is only ever an Event's, never a condition's


@dataclasses.dataclass(frozen=True)
class ConditionDoc:
    """One condition type: on which objects it appears and what its status says."""

    type: str
    kinds: tuple[str, ...]
    meaning: str


@dataclasses.dataclass(frozen=True)
class ReasonDoc:
    """One reason: the conditions (or EVENT) it appears on, what it means and what to do.

    `action` empty means there is nothing to do: the reason reports progress or an outcome.
    """

    reason: str
    conditions: tuple[str, ...]
    meaning: str
    action: str = ""
    kinds: tuple[str, ...] = (EXPERIMENT,)


C = ConditionType

CONDITIONS: tuple[ConditionDoc, ...] = (
    ConditionDoc(C.PREFLIGHT.value, BOTH,
                 "What the experiment (or the sweep's dataset) needs exists and may be used: APIs, storage and "
                 "snapshot classes, claims, snapshots, the RUN:ai project, the Kueue LocalQueue, opted-in Secrets "
                 "and ServiceAccounts. False: nothing is created yet; the check is retried until it passes."),
    ConditionDoc(C.DATASET_READY.value, BOTH,
                 "The dataset PersistentVolumeClaim is Bound (a sweep: its dataset is prepared and snapshotted)."),
    ConditionDoc(C.DATA_PREPARED.value, (EXPERIMENT,),
                 "The download/prepare Job finished, or was skipped (a restored snapshot, a prepared claim)."),
    ConditionDoc(C.VOLUME_SHARED.value, (EXPERIMENT,),
                 "The dataset volume is ReadWriteMany, so workers on several nodes can mount it (TR-4896's PV patch)."),
    ConditionDoc(C.TRAINED.value, (EXPERIMENT,), "The MPIJob ran to its end; Unknown while it runs."),
    ConditionDoc(C.SNAPSHOTTED.value, (EXPERIMENT,),
                 "The VolumeSnapshot of data, model and logs is ready to use."),
    ConditionDoc(C.SUCCEEDED.value, BOTH,
                 "Terminal: the experiment (or sweep) succeeded. `kubectl wait --for=condition=Succeeded` waits "
                 "for it."),
    ConditionDoc(C.FAILED.value, BOTH,
                 "Terminal: the experiment (or sweep) failed; the reason and message say where and why."),
    ConditionDoc(C.STOPPED.value, (EXPERIMENT,),
                 "Terminal, on purpose: a sweep's early-stopping rule ended the trial."),
    ConditionDoc(C.SPEC_CHANGE_IGNORED.value, BOTH,
                 "The spec was edited after training (a sweep: after it started) and the edit is not applied."),
    ConditionDoc(C.STORAGE_TIER.value, (EXPERIMENT,),
                 "The dataset volume's Azure NetApp Files service level (spec.storage). A failed move never stops "
                 "training: it goes on at the level the volume has."),
    ConditionDoc(C.QUEUED.value, (EXPERIMENT,),
                 "scheduler kueue: the MPIJob waits, suspended, in its LocalQueue for Kueue's admission."),
    ConditionDoc(C.TRAINING_FROM_SCRATCH.value, (EXPERIMENT,),
                 "vgg16_bn trains without ImageNet weights (spec.training.pretrainedWeights unset)."),
    ConditionDoc(C.STALLED.value, (EXPERIMENT,),
                 "No new training progress for spec.training.stallTimeoutSeconds while the MPIJob runs."),
    ConditionDoc(C.MLFLOW_PARENT_RUN.value, (SWEEP,),
                 "spec.template.tracking.mlflow: the sweep's MLflow parent run, found or created by the Job "
                 "`<sweep>-mlflow`. It never holds the sweep up: the trials run (and log their own runs) whatever "
                 "it says."),
)

F = FailureReason
_PREFLIGHT = (C.PREFLIGHT.value,)
# A Secret the sweep's MLflow Job would read is checked like the others, and reported on MLflowParentRun.
_SECRET_CHECKS = (C.PREFLIGHT.value, C.MLFLOW_PARENT_RUN.value)
_GRANT = ("the chart's `credentials.optInLabel` (default true) lets owners opt in by label; "
          "`credentials.secrets` / `credentials.serviceAccounts` list `namespace/name` entries")

REASONS: tuple[ReasonDoc, ...] = (
    # ---- running steps and outcomes (no action needed)
    ReasonDoc("InProgress", (C.DATASET_READY.value, C.DATA_PREPARED.value, C.VOLUME_SHARED.value, C.TRAINED.value,
                             C.SNAPSHOTTED.value, C.SUCCEEDED.value, C.FAILED.value),
              "The step runs (Unknown), or the experiment has not ended yet (Succeeded Unknown, Failed False).",
              kinds=BOTH),
    ReasonDoc("Passed", _PREFLIGHT, "Every preflight check passed; the message lists the mpi-operator features found.",
              kinds=BOTH),
    ReasonDoc("Bound", (C.DATASET_READY.value,), "The dataset claim is bound to its volume."),
    ReasonDoc("Completed", (C.DATA_PREPARED.value,), "The prepare Job completed."),
    ReasonDoc("Skipped", (C.DATA_PREPARED.value,),
              "Nothing to prepare: the volume was restored from a snapshot, or the claim is annotated as prepared."),
    ReasonDoc("AlreadyReadWriteMany", (C.VOLUME_SHARED.value,), "The volume was ReadWriteMany already."),
    ReasonDoc("PatchedToReadWriteMany", (C.VOLUME_SHARED.value,),
              "The PersistentVolume was patched to ReadWriteMany (TR-4896's step 3)."),
    ReasonDoc("Running", (C.TRAINED.value,), "The MPIJob runs."),
    ReasonDoc("Ready", (C.SNAPSHOTTED.value,), "The VolumeSnapshot is ready to use."),
    ReasonDoc("Disabled", (C.SNAPSHOTTED.value,), "spec.snapshot.enabled is false: no snapshot is taken."),
    ReasonDoc("Succeeded", (C.TRAINED.value, C.SUCCEEDED.value, C.FAILED.value, EVENT),
              "The MPIJob, the experiment or the sweep succeeded.", kinds=BOTH),
    ReasonDoc("Provisioning", (C.DATASET_READY.value,),
              "The sweep waits for its dataset claim `<sweep>-dataset-data` to be bound.", kinds=(SWEEP,)),
    ReasonDoc("Preparing", (C.DATASET_READY.value,), "The sweep's prepare Job runs.", kinds=(SWEEP,)),
    ReasonDoc("Snapshotting", (C.DATASET_READY.value,),
              "The sweep snapshots its prepared dataset as `<sweep>-dataset`.", kinds=(SWEEP,)),
    ReasonDoc("Snapshotted", (C.DATASET_READY.value,),
              "The sweep's dataset was prepared once and snapshotted; every trial restores it.", kinds=(SWEEP,)),
    ReasonDoc("FromSnapshot", (C.DATASET_READY.value,),
              "The sweep's template restores a VolumeSnapshot: the trials use it directly.", kinds=(SWEEP,)),
    # ---- preflight: nothing is created until these are fixed
    ReasonDoc("MissingMPIJobAPI", _PREFLIGHT, "The kubeflow.org/v2beta1 MPIJob API is not served.",
              "Install the Kubeflow MPI operator (v0.5.0 or later; v0.4 works without launcherCreationPolicy).",
              kinds=BOTH),
    ReasonDoc("MissingVolumeSnapshotAPI", _PREFLIGHT, "The snapshot.storage.k8s.io/v1 VolumeSnapshot API is not served.",
              "Install the external-snapshotter CRDs and snapshot controller (v6 or later), or set "
              "spec.snapshot.enabled to false and use no fromSnapshot source.", kinds=BOTH),
    ReasonDoc("MissingStorageClass", _PREFLIGHT, "The dataset's storage class does not exist.",
              "Create it (the chart's storageSetup.enabled creates `azurenetappfiles`), or set "
              "spec.dataset.storageClassName or the chart value defaults.storageClassName.", kinds=BOTH),
    ReasonDoc("MissingVolumeSnapshotClass", _PREFLIGHT, "The VolumeSnapshotClass to use does not exist.",
              "Create it (storageSetup.enabled creates `netapp-csi-snapclass`), or set "
              "spec.snapshot.volumeSnapshotClassName or defaults.volumeSnapshotClassName.", kinds=BOTH),
    ReasonDoc("MissingClaim", _PREFLIGHT, "The claim named by spec.dataset.existingClaim does not exist.",
              "Create the claim in the experiment's namespace, or fix its name.", kinds=BOTH),
    ReasonDoc("MissingSnapshot", _PREFLIGHT, "The VolumeSnapshot named by spec.dataset.fromSnapshot does not exist.",
              "Pick an existing snapshot (`kubectl get volumesnapshot`) in the experiment's namespace.", kinds=BOTH),
    ReasonDoc("MissingRunaiProject", _PREFLIGHT, "The namespace `runai-<project>` of the RUN:ai project does not exist.",
              "Create the project in RUN:ai, or fix spec.scheduler.project.", kinds=BOTH),
    ReasonDoc("MPIOperatorTooOld", _PREFLIGHT,
              "scheduler kueue needs an MPIJob with spec.runPolicy.suspend, which this mpi-operator lacks.",
              "Upgrade the Kubeflow MPI operator to v0.4.0 or later (v0.5.0 or later recommended).", kinds=BOTH),
    ReasonDoc("MissingKueueAPI", _PREFLIGHT, "scheduler kueue, but the kueue.x-k8s.io LocalQueue API is not served.",
              "Install Kueue (v0.9 or later) with its kubeflow.org/mpijob integration, or choose another scheduler.",
              kinds=BOTH),
    ReasonDoc("MissingLocalQueue", _PREFLIGHT,
              "The LocalQueue of spec.scheduler.queueName does not exist in the namespace (Kueue would keep the "
              "MPIJob suspended for ever).",
              "Create the LocalQueue for a ClusterQueue, or name an existing one.", kinds=BOTH),
    ReasonDoc("NotACSIVolume", _PREFLIGHT, "The existing claim's volume is not a CSI volume: it cannot be snapshotted.",
              "Set spec.snapshot.enabled to false.", kinds=BOTH),
    ReasonDoc("AmbiguousVolumeSnapshotClass", _PREFLIGHT,
              "Two or more VolumeSnapshotClasses of the claim's CSI driver are marked default.",
              "Unmark all but one, or name one in spec.snapshot.volumeSnapshotClassName.", kinds=BOTH),
    ReasonDoc("NoVolumeSnapshotClassForDriver", _PREFLIGHT,
              "No VolumeSnapshotClass fits the existing claim's CSI driver (none is marked default, and the "
              "operator's default belongs to another driver).",
              "Create a class for that driver, name one in spec.snapshot.volumeSnapshotClassName, or set "
              "spec.snapshot.enabled to false.", kinds=BOTH),
    ReasonDoc("MissingSecret", _SECRET_CHECKS,
              "A Secret named by a secretRef (or by tracking.mlflow.credentialsSecretRef) does not exist.",
              'Create it in the experiment\'s namespace, labelled lanex.dev/usable-by-experiments: "true".', kinds=BOTH),
    ReasonDoc("MissingServiceAccount", _PREFLIGHT,
              "The ServiceAccount of spec.dataset.prepareServiceAccountName does not exist.",
              'Create it, labelled lanex.dev/usable-by-experiments: "true".', kinds=BOTH),
    ReasonDoc("SecretNotOptedIn", _SECRET_CHECKS,
              "A Secret named by a secretRef (or by tracking.mlflow.credentialsSecretRef) is not opted in for "
              "experiments.",
              "Its owner labels it: `kubectl label secret NAME -n NS lanex.dev/usable-by-experiments=true`; or "
              + _GRANT + ".", kinds=BOTH),
    ReasonDoc("ServiceAccountNotOptedIn", _PREFLIGHT,
              "The prepare Job's ServiceAccount is not opted in for experiments.",
              "Its owner labels it: `kubectl label serviceaccount NAME -n NS lanex.dev/usable-by-experiments=true`; "
              "or " + _GRANT + ".", kinds=BOTH),
    ReasonDoc("SecretNotReadable", _SECRET_CHECKS, "The operator may not read the Secret's labels (a 403).",
              "Grant the operator get on secrets (the chart does with credentials.optInLabel), or list the Secret "
              "in credentials.secrets.", kinds=BOTH),
    ReasonDoc("ServiceAccountNotReadable", _PREFLIGHT, "The operator may not read the ServiceAccount's labels.",
              "Grant the operator get on serviceaccounts (the chart does with credentials.optInLabel), or list it "
              "in credentials.serviceAccounts.", kinds=BOTH),
    ReasonDoc("MissingDependencies", _PREFLIGHT, "More than one preflight check failed; the message lists them all.",
              "Fix each problem the message names (each is one of the reasons above).", kinds=BOTH),
    # ---- waits on other controllers (Unknown while waiting; see "Nothing waits forever")
    ReasonDoc("ImagePullBackOff", (C.DATA_PREPARED.value, C.TRAINED.value),
              "A prepare, launcher or worker pod cannot pull its image.",
              "Fix spec.training.image (or defaults.trainerImage) or the pull Secret; the step fails after the "
              "chart's timeouts.podStuckSeconds."),
    ReasonDoc("ErrImagePull", (C.DATA_PREPARED.value, C.TRAINED.value), "An image pull failed.",
              "As ImagePullBackOff."),
    ReasonDoc("CreateContainerConfigError", (C.DATA_PREPARED.value, C.TRAINED.value),
              "The kubelet cannot build a container's configuration (a missing ConfigMap or Secret key, ...).",
              "Read the message (the kubelet's words) and fix what it names."),
    ReasonDoc("Unschedulable", (C.DATA_PREPARED.value, C.TRAINED.value),
              "The scheduler finds no node for a pod (GPUs, node selector, tolerations, quota).",
              "Add nodes (a cluster autoscaler has timeouts.podStuckSeconds to do so) or ask for less "
              "(spec.training.workers, gpusPerWorker, nodeSelector)."),
    ReasonDoc("CrashLoopBackOff", (C.DATA_PREPARED.value, C.TRAINED.value),
              "A container keeps exiting non-zero and is restarted in place.",
              "Read its log (`lanex logs NAME`, `--worker N`, `--prepare`); the step fails after the chart's "
              "timeouts.crashLoopRestarts restarts."),
    ReasonDoc("FailedMount", (C.DATASET_READY.value, C.DATA_PREPARED.value, C.TRAINED.value),
              "The kubelet cannot mount a pod's volume (a missing Secret or ConfigMap, a wrong ANF export rule, no "
              "NFS client on the node).",
              "Fix what the message (the kubelet's Event) names; a missing secretRef Secret: create it, the pod "
              "starts by itself. The step fails after timeouts.podStuckSeconds.", kinds=BOTH),
    ReasonDoc("FailedAttachVolume", (C.DATASET_READY.value, C.DATA_PREPARED.value, C.TRAINED.value),
              "The attach/detach controller cannot attach a pod's volume.",
              "As FailedMount: read the Event quoted in the message.", kinds=BOTH),
    ReasonDoc("WaitingForWorkers", (C.TRAINED.value,),
              "The MPIJob exists but its launcher has not started (under WaitForWorkersReady it starts once every "
              "worker is Ready); the message says what blocks it.",
              "Read the message; training fails with TrainingFailed after the chart's timeouts.trainingStartSeconds."),
    ReasonDoc("SnapshotError", (C.SNAPSHOTTED.value,), "The snapshot controller reports an error on the VolumeSnapshot.",
              "Read the controller's words in the message; the step fails after spec.snapshot.readyTimeoutSeconds."),
    ReasonDoc("WaitingForAdmission", (C.QUEUED.value,),
              "The MPIJob waits, suspended, in its Kueue LocalQueue; the message says for how long.",
              "Nothing, unless it waits too long: look at the ClusterQueue's quota (`kubectl get clusterqueue`)."),
    ReasonDoc("Admitted", (C.QUEUED.value,), "Kueue admitted the MPIJob (Queued False): training started."),
    # ---- terminal failures (FailureReason)
    ReasonDoc(F.INVALID_SPEC.value, (C.FAILED.value, C.SUCCEEDED.value),
              "The spec (or name) is invalid; the message names the field. Not retried.",
              "Fix the spec and create the object again; `lanex render FILE` shows the same message offline.",
              kinds=BOTH),
    ReasonDoc(F.DATASET_FAILED.value, (C.DATASET_READY.value, C.VOLUME_SHARED.value, C.FAILED.value,
                                       C.SUCCEEDED.value),
              "The dataset claim was not bound in time, lost its volume, or its restore source never became ready.",
              "Read the provisioner's or snapshot controller's words in the message; raise "
              "timeouts.datasetBoundSeconds if provisioning is only slow.", kinds=BOTH),
    ReasonDoc(F.DOWNLOAD_FAILED.value, (C.DATA_PREPARED.value, C.FAILED.value, C.SUCCEEDED.value),
              "The download/prepare Job failed (or its pod was stuck); the message quotes the pod's termination "
              "message.",
              "`lanex logs NAME --prepare`; check URLs, sha256 and the Secret's keys.", kinds=BOTH),
    ReasonDoc(F.TRAINING_FAILED.value, (C.TRAINED.value, C.FAILED.value, C.SUCCEEDED.value),
              "The MPIJob failed, was refused by mpi-operator, never got a condition, or a pod was stuck.",
              "`lanex logs NAME` (launcher) or `--worker N`; the message holds the failing pod's termination "
              "message or mpi-operator's Event."),
    ReasonDoc(F.SNAPSHOT_FAILED.value, (C.SNAPSHOTTED.value, C.DATASET_READY.value, C.FAILED.value,
                                        C.SUCCEEDED.value),
              "The VolumeSnapshot was not ready to use in time, or no snapshot class fits.",
              "Read the snapshot controller's error; raise spec.snapshot.readyTimeoutSeconds for large volumes.",
              kinds=BOTH),
    ReasonDoc(F.TIMEOUT.value, (C.TRAINED.value, C.FAILED.value, C.SUCCEEDED.value),
              "Training ran past spec.training.activeDeadlineSeconds.",
              "Raise activeDeadlineSeconds, or train fewer epochs or iterations."),
    ReasonDoc(F.QUEUE_TIMEOUT.value, (C.QUEUED.value, C.FAILED.value, C.SUCCEEDED.value),
              "Kueue did not admit the MPIJob within spec.scheduler.queueTimeoutSeconds; the MPIJob was deleted.",
              "Check the ClusterQueue's quota (`kubectl get clusterqueue`) or raise queueTimeoutSeconds."),
    ReasonDoc(F.PREFLIGHT_FAILED.value, (C.FAILED.value, C.SUCCEEDED.value),
              "What the experiment or sweep uses was still missing after the Preflight bound; the message quotes the "
              "last preflight reason.",
              "Fix that reason (see Preflight above) and create the object again; raise the chart's "
              "timeouts.preflightSeconds if things are installed later on purpose.", kinds=BOTH),
    ReasonDoc(F.EARLY_STOPPED.value, (C.TRAINED.value, C.STOPPED.value, C.FAILED.value, C.SUCCEEDED.value),
              "A sweep's median rule stopped this trial (phase Stopped)."),
    ReasonDoc("ApiError", (C.FAILED.value, C.SUCCEEDED.value),
              "An API request the sweep needed failed and cannot be retried.",
              "Read the message (RBAC? a webhook?), fix it and create the sweep again.", kinds=(SWEEP,)),
    ReasonDoc(F.RECONCILE_ERROR.value, (C.FAILED.value, C.SUCCEEDED.value),
              "The operator met an error nothing foresaw (the message names the exception): said once, not "
              "retried forever.",
              "Delete the object; report it as a lanex bug with the message and the operator's log.", kinds=BOTH),
    ReasonDoc("AllTrialsFailed", (C.FAILED.value, C.SUCCEEDED.value), "The sweep ended and no trial succeeded.",
              "`lanex describe SWEEP` lists each trial's reason; look at one trial's failure.", kinds=(SWEEP,)),
    # ---- warnings on a running experiment
    ReasonDoc("TrainingStarted", (C.SPEC_CHANGE_IGNORED.value,),
              "The spec was edited after training started; the running MPIJob keeps the old spec.",
              "Create a new experiment with the new spec."),
    ReasonDoc("SweepStarted", (C.SPEC_CHANGE_IGNORED.value,),
              "The sweep's spec was edited after it started (the annotation lanex.dev/sweep-spec keeps the old one).",
              "Create a new sweep.", kinds=(SWEEP,)),
    ReasonDoc("NoPretrainedWeights", (C.TRAINING_FROM_SCRATCH.value,),
              "vgg16_bn without spec.training.pretrainedWeights trains from random initialisation.",
              "Set spec.training.pretrainedWeights (torchvision's ImageNet VGG16-BN file, with its sha256)."),
    ReasonDoc("NoProgress", (C.STALLED.value,),
              "No new progress for stallTimeoutSeconds; the message names the last step and when it was seen.",
              "`lanex logs NAME`; with stallAction Restart the operator restarts the launcher."),
    ReasonDoc("ProgressResumed", (C.STALLED.value, EVENT), "Progress came back after a stall."),
    ReasonDoc("LauncherRestarted", (C.STALLED.value, EVENT),
              "stallAction Restart deleted the stalled launcher pod; its Job starts a new one that resumes from the "
              "last checkpoint (one of backoffLimit's retries)."),
    ReasonDoc("RestartsExhausted", (C.STALLED.value, EVENT),
              "stallAction Restart, but the launcher's backoffLimit retries are used up: only reported.",
              "Look at the launcher log; delete and recreate the experiment (it resumes from the checkpoint on a "
              "restored snapshot), or raise spec.training.backoffLimit."),
    ReasonDoc("RestartNotAllowed", (C.STALLED.value, EVENT),
              "stallAction Restart, but the operator may not delete pods.",
              "Set the chart value stallRestart.deleteLauncherPods: true (grants delete on pods)."),
    ReasonDoc("TrainingEnded", (C.STALLED.value,), "The MPIJob finished: no stall any more."),
    # ---- storage tier (azure.storage_tier.Reason and the moves)
    ReasonDoc("Moving", (C.STORAGE_TIER.value,), "A service-level change of the dataset volume is under way."),
    ReasonDoc("AtStandard", (C.STORAGE_TIER.value,), "The volume is at service level Standard."),
    ReasonDoc("AtPremium", (C.STORAGE_TIER.value,), "The volume is at service level Premium."),
    ReasonDoc("AtUltra", (C.STORAGE_TIER.value,), "The volume is at service level Ultra."),
    ReasonDoc("PoolNotConfigured", (C.STORAGE_TIER.value,),
              "The operator has no capacity pool for the level asked (or its pool configuration is invalid).",
              "Set the chart value storage.tierPools.<Level> to the pool's resource ID."),
    ReasonDoc("VolumeNotMapped", (C.STORAGE_TIER.value,),
              "The dataset claim's volume cannot be mapped to an ANF volume.",
              "Annotate the PV or PVC with lanex.dev/anf-volume-id (the full ANF volume ID)."),
    ReasonDoc("AuthenticationFailed", (C.STORAGE_TIER.value,), "The operator has no working Azure credentials.",
              "Set azure.workloadIdentity.clientId or azure.credentialsSecret in the chart's values."),
    ReasonDoc("PermissionDenied", (C.STORAGE_TIER.value,), "Azure refused the pool change (403).",
              "Give the operator's identity a role that may change the NetApp volume's pool."),
    ReasonDoc("NotFound", (C.STORAGE_TIER.value,), "The ANF volume or capacity pool does not exist (404).",
              "Check storage.tierPools and the volume's mapping."),
    ReasonDoc("ConflictingOperation", (C.STORAGE_TIER.value,), "Another operation on the volume is in progress (409).",
              "Nothing: retryable; the next experiment's move tries again."),
    ReasonDoc("Throttled", (C.STORAGE_TIER.value,), "Azure throttled the request (429).", "Nothing: retryable."),
    ReasonDoc("ServerError", (C.STORAGE_TIER.value,), "Azure answered with a server error.", "Nothing: retryable."),
    ReasonDoc("ConnectionError", (C.STORAGE_TIER.value,), "Azure Resource Manager could not be reached.",
              "Check the operator's egress to management.azure.com."),
    ReasonDoc("Rejected", (C.STORAGE_TIER.value,), "Azure rejected the request (another 4xx).",
              "Read Azure's words in the message."),
    ReasonDoc("PoolChangeFailed", (C.STORAGE_TIER.value,), "The pool-change operation itself failed on Azure's side.",
              "Read Azure's words in the message and the volume's activity log."),
    ReasonDoc("TimedOut", (C.STORAGE_TIER.value,), "The move did not finish within the operator's budget; it may "
                                                   "still finish on Azure's side.",
              "Check the volume's pool in Azure; the condition says the level it was asked for."),
    ReasonDoc("UnexpectedError", (C.STORAGE_TIER.value,), "An unexpected error; training goes on at the current level.",
              "Report it with the message."),
    # ---- Events only
    ReasonDoc("StorageTierChanged", (EVENT,), "The volume moved to another service level."),
    ReasonDoc("StorageTierFailed", (EVENT,), "A service-level change failed; the StorageTier condition says why."),
    ReasonDoc("SpecChangeIgnored", (EVENT,), "Posted with the SpecChangeIgnored condition.", kinds=BOTH),
    ReasonDoc("DatasetReady", (EVENT,), "The sweep's dataset is ready.", kinds=(SWEEP,)),
    ReasonDoc("TrialsCreated", (EVENT,), "The sweep created trials.", kinds=(SWEEP,)),
    ReasonDoc("TrialStopped", (EVENT,), "The sweep's early-stopping rule stopped a trial.", kinds=(SWEEP,)),
    ReasonDoc("TrialsDeleted", (EVENT,), "retention.keepBest deleted the other trials.", kinds=(SWEEP,)),
    ReasonDoc("Deleted", (EVENT,), "The object was deleted; the message says what retention kept.", kinds=BOTH),
    ReasonDoc("ProgressUnreadable", (EVENT,),
              "The operator stopped following the training progress after an error it did not foresee; training "
              "itself goes on and the experiment still ends Succeeded or Failed.",
              "Report it as a lanex bug with the operator's log; `lanex logs NAME` still shows the progress."),
    # ---- a sweep's MLflow parent run
    ReasonDoc("Creating", (C.MLFLOW_PARENT_RUN.value,),
              "The Job `<sweep>-mlflow` runs `lanex mlflow sweep-run`, which finds or creates the parent run.",
              kinds=(SWEEP,)),
    ReasonDoc("Created", (C.MLFLOW_PARENT_RUN.value,),
              "The parent run exists: status.mlflow links to it, and the trials' runs become its children.",
              kinds=(SWEEP,)),
    ReasonDoc("JobFailed", (C.MLFLOW_PARENT_RUN.value,),
              "The Job could not find or create the parent run (the message has its last words, e.g. the server "
              "did not answer for 2 minutes). The trials still log their own runs, tagged lanex.sweepUid.",
              "Check the tracking server and the Secret's keys; then run `lanex mlflow sweep-run` with the "
              "sweep's name and uid (docs: MLflow tracking) to make the parent and adopt the trials.",
              kinds=(SWEEP,)),
    ReasonDoc("MLflowParentRunFailed", (EVENT,), "Posted with MLflowParentRun False, reason JobFailed.",
              kinds=(SWEEP,)),
    ReasonDoc("MLflowParentRunNotEnded", (EVENT,),
              "The sweep ended but the Job `<sweep>-mlflow-end` that ends its parent run could not be created; the "
              "run stays RUNNING in MLflow.", "Run `lanex mlflow sweep-run ... --end FINISHED` by hand.",
              kinds=(SWEEP,)),
    ReasonDoc("ReleaseFailed", (EVENT,),
              "Deleting a sweep could not release its children yet (it is retried; after 10 minutes the sweep goes, "
              "its dataset kept).", "Read the message; delete what it names by hand if needed.", kinds=(SWEEP,)),
)


def reasons_by_name() -> dict[str, ReasonDoc]:
    return {doc.reason: doc for doc in REASONS}
