"""Checks that what an experiment needs exists in the cluster before anything is created.

Why it exists: a missing VolumeSnapshot or MPIJob API, storage class, snapshot class, RUN:ai
project namespace or Kueue LocalQueue would otherwise surface as a crash loop or a child stuck
forever. The operator checks at start-up (logged) and for each experiment (reported as the
`Preflight` condition and a Warning Event, retried until it passes). Lookups are cached for a few seconds so that many
experiments arriving together cost one request per distinct object.

It also chooses the VolumeSnapshotClass of a claim lanex did not create (`snapshot_class`): the
snapshot controller uses a named class whatever its CSI driver, so naming the Trident class for a
claim of another driver would never give a usable snapshot.

And it refuses what an experiment may not borrow (`credentials`): a Secret (`secretRef`) or
ServiceAccount (`prepareServiceAccountName`) the prepare Job would use, or the Secret of the MLflow
server's credentials (`tracking.mlflow.credentialsSecretRef`) the launcher would read, must be opted in by its owner
(label `lanex.dev/usable-by-experiments: "true"`) or by the chart's values (`controller.grants`); the
condition names the object and the label to add, and nothing is created until then.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

from lanex_operator.plan.defaults import (SCHEDULER_FIELD, SNAPSHOT_CLASS_FIELD, STORAGE_CLASS_FIELD, VARIABLES,
                                          field_origin)
from lanex_operator.controller.grants import OPT_IN_LABEL, OPT_IN_VALUE, Grants
from lanex_operator.controller.kube import Kube, KubeError, object_path
from lanex_operator.plan.steps import ExperimentPlan, SecretEnv

PREPARE_SERVICE_ACCOUNT_FIELD = "spec.dataset.prepareServiceAccountName"

MPIJOB_API = ("kubeflow.org/v2beta1", "mpijobs")
SNAPSHOT_API = ("snapshot.storage.k8s.io/v1", "volumesnapshots")
MPIJOB_CRD = "mpijobs.kubeflow.org"
# Kueue's LocalQueue API, newest first: v1beta2 is served since Kueue 0.15, v1beta1 before (and still by 0.17).
KUEUE_APIS = ("kueue.x-k8s.io/v1beta2", "kueue.x-k8s.io/v1beta1")
QUEUE_NAME_FIELD = "spec.scheduler.queueName"
# What lanex uses of mpi-operator, by the field its v2beta1 CRD declares and the release that added it
# (kubeflow/mpi-operator manifests/base/kubeflow.org_mpijobs.yaml at each tag).
MPI_OPERATOR_FEATURES = (
    ("launcherCreationPolicy", ("spec", "launcherCreationPolicy"), "0.5.0"),
    ("runPolicy.suspend", ("spec", "runPolicy", "suspend"), "0.4.0"),
    ("runPolicy.managedBy", ("spec", "runPolicy", "managedBy"), "0.6.0"),
)


@dataclasses.dataclass(frozen=True)
class MPIOperatorFeatures:
    """The mpi-operator features the installed MPIJob CRD declares (None: the CRD could not be read)."""

    fields: Optional[frozenset[str]]

    def has(self, feature: str) -> bool:
        """Whether the CRD declares `feature`; an unreadable CRD counts as a current mpi-operator."""
        return self.fields is None or feature in self.fields

    @property
    def launcher_creation_policy(self) -> bool:
        return self.has("launcherCreationPolicy")

    def describe(self) -> str:
        """One line for the Preflight condition, e.g. `mpi-operator: launcherCreationPolicy (>= 0.5.0) ...`."""
        if self.fields is None:
            return f"mpi-operator: CRD {MPIJOB_CRD} not readable, assuming >= 0.5.0"
        parts = [f"{name} (>= {version}) {'yes' if name in self.fields else 'no'}"
                 for name, _, version in MPI_OPERATOR_FEATURES]
        older = "" if self.launcher_creation_policy else (
            "; older than 0.5.0: the launcher starts at once and `lanex launch` waits for the workers' ssh")
        return "mpi-operator: " + ", ".join(parts) + older


def crd_features(crd: Mapping[str, Any]) -> MPIOperatorFeatures:
    """The features declared by the served v2beta1 version of an MPIJob CRD."""
    versions = (crd.get("spec") or {}).get("versions") or []
    version = next((v for v in versions if v.get("name") == "v2beta1"), {})
    root = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
    found = set()
    for name, path, _ in MPI_OPERATOR_FEATURES:
        node: Any = root
        for part in path:
            node = ((node or {}).get("properties") or {}).get(part)
        if node is not None:
            found.add(name)
    return MPIOperatorFeatures(frozenset(found))
# The external-snapshotter's mark of the class it gives snapshots that name none, per CSI driver.
DEFAULT_SNAPSHOT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
EXISTING_CLAIM_FIELD = "spec.dataset.existingClaim.claimName"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something missing, with the reason used in the condition and what to do about it."""

    reason: str
    message: str


class Preflight:
    """Existence checks with a short-lived cache shared by all experiments."""

    def __init__(self, kube: Kube, ttl_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 grants: Grants | None = None) -> None:
        self.kube = kube
        self.ttl = ttl_seconds
        self.clock = clock
        self.grants = grants if grants is not None else Grants()
        self._cache: dict[str, tuple[float, bool]] = {}
        self._features: tuple[float, MPIOperatorFeatures] | None = None
        self._classes: tuple[float, list[dict[str, Any]]] | None = None  # VolumeSnapshotClasses, listed once per ttl

    async def _exists(self, key: str, probe: Callable[[], object]) -> bool:
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = bool(await probe())  # type: ignore[misc]
        self._cache[key] = (now + (self.ttl if found else min(self.ttl, 2.0)), found)
        return found

    async def _object(self, path: str) -> bool:
        return await self._exists(path, lambda: self.kube.get_or_none(path))

    async def _api(self, api_version: str, plural: str) -> bool:
        return await self._exists(f"api:{api_version}/{plural}", lambda: self.kube.api_served(api_version, plural))

    async def mpi_operator(self) -> MPIOperatorFeatures:
        """What the installed mpi-operator supports, from its CRD (cached like the other lookups)."""
        now = self.clock()
        cached = self._features
        if cached is not None and cached[0] > now:
            return cached[1]
        path = object_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=MPIJOB_CRD)
        try:
            crd = await self.kube.get_or_none(path)
        except KubeError as error:
            if error.retryable:
                raise
            crd = None  # e.g. 403 from an older chart's RBAC: assume a current mpi-operator
        features = crd_features(crd) if crd is not None else MPIOperatorFeatures(None)
        self._features = (now + self.ttl, features)
        return features

    async def cluster(self) -> list[Problem]:
        """The APIs every experiment needs (checked at operator start-up)."""
        problems = []
        if not await self._api(*MPIJOB_API):
            problems.append(Problem("MissingMPIJobAPI", "the kubeflow.org/v2beta1 MPIJob API is not served: "
                                                        "install the Kubeflow MPI operator (v0.4 or later)"))
        if not await self._api(*SNAPSHOT_API):
            problems.append(Problem("MissingVolumeSnapshotAPI", "the snapshot.storage.k8s.io/v1 VolumeSnapshot API "
                                                                "is not served: install the external-snapshotter "
                                                                "CRDs and snapshot controller"))
        return problems

    async def experiment(self, plan: ExperimentPlan) -> list[Problem]:
        """Everything this experiment refers to, with the values it runs with (the cluster's defaults
        filled in: a message then names the operator's default rather than the unset spec field)."""
        problems: list[Problem] = []
        namespace, dataset = plan.namespace, plan.dataset
        needs_snapshots = plan.snapshot is not None or dataset.restore_from is not None
        for problem in await self.cluster():
            if problem.reason != "MissingVolumeSnapshotAPI" or needs_snapshots:
                problems.append(problem)
        if dataset.creates_claim:
            name = dataset.storage_class_name
            if not await self._object(object_path("storage.k8s.io/v1", "storageclasses", name=name)):
                origin = field_origin(STORAGE_CLASS_FIELD, plan.defaulted)
                problems.append(Problem("MissingStorageClass", f'storage class "{name}" ({origin}) not found'))
        else:
            claim = dataset.claim_name
            if not await self._object(object_path("v1", "persistentvolumeclaims", namespace, claim)):
                problems.append(Problem("MissingClaim", f'PersistentVolumeClaim "{claim}" '
                                                        f"(spec.dataset.existingClaim.claimName) not found in "
                                                        f'namespace "{namespace}"'))
        snapshot_api = not any(p.reason == "MissingVolumeSnapshotAPI" for p in problems)
        if dataset.restore_from is not None and snapshot_api:
            source = dataset.restore_from
            path = object_path(SNAPSHOT_API[0], "volumesnapshots", namespace, source)
            if not await self._object(path):
                problems.append(Problem("MissingSnapshot", f'VolumeSnapshot "{source}" '
                                                           f"(spec.dataset.fromSnapshot.snapshotName) not found in "
                                                           f'namespace "{namespace}"'))
        if plan.snapshot is not None and snapshot_api and chooses_class_by_driver(plan):
            _, problem = await self.snapshot_class(plan)
            if problem is not None:
                problems.append(problem)
        elif plan.snapshot is not None and snapshot_api:
            klass = plan.snapshot.volume_snapshot_class_name
            if not await self._object(object_path(SNAPSHOT_API[0], "volumesnapshotclasses", name=klass)):
                origin = field_origin(SNAPSHOT_CLASS_FIELD, plan.defaulted)
                problems.append(Problem("MissingVolumeSnapshotClass",
                                        f'VolumeSnapshotClass "{klass}" ({origin}) not found'))
        problems += await self.credentials(plan)
        if plan.train.scheduler == "kueue" and not any(p.reason == "MissingMPIJobAPI" for p in problems):
            features = await self.mpi_operator()
            if not features.has("runPolicy.suspend"):
                problems.append(Problem("MPIOperatorTooOld", "spec.scheduler.type kueue needs an mpi-operator "
                                                             "whose MPIJob has spec.runPolicy.suspend (>= 0.4.0): "
                                                             "upgrade the Kubeflow MPI operator"))
        if plan.train.scheduler == "kueue":
            problems.extend(await self._kueue_queue(namespace, str(plan.train.kueue_queue)))
        if plan.train.scheduler == "runai":
            project = plan.train.runai_project
            project_ns = f"runai-{project}"
            origin = ("the namespace, as the operator's default scheduler is runai"
                      if SCHEDULER_FIELD in plan.defaulted else "spec.scheduler.project")
            if not await self._object(object_path("v1", "namespaces", name=project_ns)):
                problems.append(Problem("MissingRunaiProject", f'namespace "{project_ns}" of RUN:ai project '
                                                               f'"{project}" ({origin}) '
                                                               f"not found: create the project in RUN:ai"))
        return problems

    async def credentials(self, plan: ExperimentPlan, root: str = "spec") -> list[Problem]:
        """The Secrets and the ServiceAccount the prepare Job would use, and the Secret of the MLflow server's
        credentials the launcher would read, unless each is opted in: labelled OPT_IN_LABEL=true by its owner,
        or listed in the chart's values. `root` is where the experiment spec sits in the object whose fields
        the messages name (`spec.template` for a sweep)."""
        secrets: dict[str, list[str]] = {}  # each Secret once, with every field that names it
        for mount in plan.prepare.secret_mounts if plan.prepare is not None else ():
            secrets.setdefault(mount.secret_name, []).extend(mount.fields)
        for item in plan.train.launcher.secret_env:
            if item.field not in secrets.setdefault(item.secret_name, []):
                secrets[item.secret_name].append(item.field)
        wanted = [("Secret", "secrets", name, ", ".join(fields)) for name, fields in secrets.items()]
        if plan.prepare is not None and plan.prepare.service_account_name is not None:
            wanted.append(("ServiceAccount", "serviceaccounts", plan.prepare.service_account_name,
                           PREPARE_SERVICE_ACCOUNT_FIELD))
        return await self._all_opted_in(plan.namespace, wanted, root)

    async def secret_env(self, namespace: str, items: Iterable[SecretEnv], root: str = "spec") -> list[Problem]:
        """The Secrets a container's environment reads by reference (e.g. a sweep's MLflow Job), unless opted in."""
        secrets: dict[str, list[str]] = {}
        for item in items:
            if item.field not in secrets.setdefault(item.secret_name, []):
                secrets[item.secret_name].append(item.field)
        return await self._all_opted_in(namespace, [("Secret", "secrets", name, ", ".join(fields))
                                                    for name, fields in secrets.items()], root)

    async def _all_opted_in(self, namespace: str, wanted: list[tuple[str, str, str, str]], root: str) -> list[Problem]:
        """(kind, plural, name, the fields naming it) of each object: the problems of those not opted in."""
        problems = []
        for kind, plural, name, fields in wanted:
            problem = await self._opted_in(kind, plural, namespace, name, fields.replace("spec.", f"{root}.")
                                           if root != "spec" else fields)
            if problem is not None:
                problems.append(problem)
        return problems

    async def _opted_in(self, kind: str, plural: str, namespace: str, name: str, fields: str) -> Problem | None:
        if self.grants.listed(kind, namespace, name):
            return None
        what = f'{kind} "{name}" ({fields}) in namespace "{namespace}"'
        how = self.grants.how_to_allow(kind, namespace, name)
        if not self.grants.credentials_by_label:
            return Problem(f"{kind}NotOptedIn", f"{what} is not usable by experiments: {how}")
        try:  # the metadata only: a Secret's values never reach the operator
            meta = await self.kube.metadata_or_none(object_path("v1", plural, namespace, name))
        except KubeError as error:
            if error.retryable:
                raise
            return Problem(f"{kind}NotReadable", f"{what}: the operator cannot read its labels ({error.status} "
                                                 f"{error.reason}): grant it get on {plural}, or {how}")
        if meta is None:
            return Problem(f"Missing{kind}", f"{what} not found; create it, labelled {OPT_IN_LABEL}: \"{OPT_IN_VALUE}\"")
        if (meta.get("labels") or {}).get(OPT_IN_LABEL) != OPT_IN_VALUE:
            return Problem(f"{kind}NotOptedIn", f"{what} is not usable by experiments: {how}")
        return None

    async def _kueue_queue(self, namespace: str, queue: str) -> list[Problem]:
        """Kueue and the experiment's LocalQueue. Kueue leaves a job in a queue that does not exist
        suspended for ever (its Workload pending with "LocalQueue ... doesn't exist"), so without this
        check the experiment would show Queued for ever with no hint of the typo."""
        versions = [version for version in KUEUE_APIS if await self._api(version, "localqueues")]
        if not versions:
            return [Problem("MissingKueueAPI", "spec.scheduler.type kueue: the kueue.x-k8s.io LocalQueue API is not "
                                               "served: install Kueue (v0.9 or later) with its kubeflow.org/mpijob "
                                               "integration, or choose another scheduler")]
        try:
            found = await self._object(object_path(versions[0], "localqueues", namespace, queue))
        except KubeError as error:
            if error.retryable:
                raise
            return []  # e.g. 403 from an older chart's RBAC: Kueue itself will say whether the queue exists
        if found:
            return []
        return [Problem("MissingLocalQueue", f'Kueue LocalQueue "{queue}" ({QUEUE_NAME_FIELD}) not found in '
                                             f'namespace "{namespace}": create it for a ClusterQueue, or name an '
                                             f"existing one")]

    async def _snapshot_classes(self) -> list[dict[str, Any]]:
        now = self.clock()
        if self._classes is None or self._classes[0] <= now:
            items = await self.kube.list(object_path(SNAPSHOT_API[0], "volumesnapshotclasses"))
            self._classes = (now + self.ttl, items)
        return self._classes[1]

    async def snapshot_class(self, plan: ExperimentPlan) -> tuple[str | None, Problem | None]:
        """The VolumeSnapshotClass of the experiment's snapshots, or the Problem why none fits.

        A class named in the spec, and the class of a claim lanex creates, are used as they are. For a
        claim lanex did not create (existingClaim) the class follows the bound PV's CSI driver
        (`choose_snapshot_class`): the snapshot controller would use a named class whatever its driver.
        (None, None) while that claim is not bound yet: the choice is made again when the snapshot is taken.
        """
        if plan.snapshot is None:
            return None, None
        if not chooses_class_by_driver(plan):
            return plan.snapshot.volume_snapshot_class_name, None
        claim = plan.dataset.claim_name
        pvc = await self.kube.get_or_none(object_path("v1", "persistentvolumeclaims", plan.namespace, claim)) or {}
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            return None, None
        pv = await self.kube.get_or_none(object_path("v1", "persistentvolumes", name=volume)) or {}
        driver = ((pv.get("spec") or {}).get("csi") or {}).get("driver")
        if not driver:
            return None, Problem("NotACSIVolume", f'PersistentVolume "{volume}" of PersistentVolumeClaim "{claim}" '
                                                  f"({EXISTING_CLAIM_FIELD}) is not a CSI volume and cannot be "
                                                  f"snapshotted: set spec.snapshot.enabled to false")
        return choose_snapshot_class(await self._snapshot_classes(), driver, plan.snapshot.volume_snapshot_class_name,
                                     f'PersistentVolumeClaim "{claim}" ({EXISTING_CLAIM_FIELD}, PersistentVolume '
                                     f'"{volume}")')


def chooses_class_by_driver(plan: ExperimentPlan) -> bool:
    """Whether the snapshot class follows the claim's CSI driver: an existing claim, and no class in the spec."""
    return plan.snapshot is not None and not plan.dataset.creates_claim and SNAPSHOT_CLASS_FIELD in plan.defaulted


def choose_snapshot_class(classes: Iterable[Mapping[str, Any]], driver: str, configured: str,
                          claim: str) -> tuple[str | None, Problem | None]:
    """The class for a volume of CSI `driver`: the one of that driver marked default (as the external-snapshotter
    chooses for a snapshot that names none; two such are its error too), else the operator's default `configured`
    when it is of that driver, else a Problem naming the driver."""
    classes = list(classes)
    defaults = sorted(str(c["metadata"]["name"]) for c in classes if c.get("driver") == driver
                      and ((c.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION)
                      == "true")
    if len(defaults) == 1:
        return defaults[0], None
    if len(defaults) > 1:
        return None, Problem("AmbiguousVolumeSnapshotClass",
                             f'{len(defaults)} VolumeSnapshotClasses of CSI driver "{driver}" ({", ".join(defaults)}) '
                             f"are marked {DEFAULT_SNAPSHOT_CLASS_ANNOTATION}, for {claim}: unmark all but one, "
                             f"or name one in {SNAPSHOT_CLASS_FIELD}")
    own = next((c for c in classes if (c.get("metadata") or {}).get("name") == configured), None)
    if own is not None and own.get("driver") == driver:
        return configured, None
    theirs = (f'is of driver "{own.get("driver")}"' if own is not None else "does not exist")
    return None, Problem("NoVolumeSnapshotClassForDriver",
                         f'no VolumeSnapshotClass for CSI driver "{driver}" of {claim}: none of that driver is marked '
                         f'{DEFAULT_SNAPSHOT_CLASS_ANNOTATION}: "true", and the operator\'s default "{configured}" '
                         f"({VARIABLES[SNAPSHOT_CLASS_FIELD]}) {theirs}; create a class for that driver, or name one "
                         f"in {SNAPSHOT_CLASS_FIELD}, or set spec.snapshot.enabled to false")
