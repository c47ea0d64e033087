"""The Kubernetes client of the `lanex` Python API (and so of the CLI): experiments, sweeps, children,
pods, logs, events, snapshots.

Why it exists: notebooks and CLI commands are short-lived processes, so the official synchronous
`kubernetes` client fits them (the operator keeps its own asynchronous client in `controller.kube`).
Everything they read or write goes through `ClusterClient`, which works on plain dicts shaped exactly
like the API's JSON, and every failure becomes a `ClusterError` whose message is one line naming the
object (`laneexperiment default/foo not found`). `kubernetes` is imported only when a client is
built, so `import lanex` and `lanex --help` never pay for it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from lanex_operator.api.models import GROUP, PLURAL, SINGULAR, VERSION
from lanex_operator.controller.builders import EXPERIMENT_LABEL, MANAGED_BY, SNAPSHOT_API_GROUP

SNAPSHOT_VERSION = "v1"
SNAPSHOT_PLURAL = "volumesnapshots"
MPI_GROUP, MPI_VERSION, MPI_PLURAL = "kubeflow.org", "v2beta1", "mpijobs"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# mpi-operator v2 labels the pods of an MPIJob with these.
MPI_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
MPI_ROLE_LABEL = "training.kubeflow.org/job-role"
MPI_INDEX_LABEL = "training.kubeflow.org/replica-index"
# The Job controller labels its pods with both (the short one before Kubernetes 1.27).
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
GONE = 410


class ClusterError(Exception):
    """An API request or lookup that failed; the message is one line meant for the user."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409


class WaitTimeout(ClusterError):
    """A watch that ended because its deadline passed."""


class NoClusterConfig(ClusterError):
    """No kubeconfig or in-cluster configuration to connect with: the user's setup to fix (exit 2)."""


def describe_api_error(what: str, status: int, reason: str, body: Any) -> str:
    """One line for an API error: `laneexperiment default/foo not found`, else the server's message."""
    message = ""
    if body:
        try:
            payload = json.loads(body) if isinstance(body, (str, bytes)) else body
            message = str(payload.get("message") or "") if isinstance(payload, dict) else ""
        except ValueError:
            message = str(body)[:300]
    if status == 404:
        return f"{what} not found"
    if status == 409 and "already exists" in message:
        return f"{what} already exists"
    if status in (401, 403):
        return f"{what}: {'unauthorized' if status == 401 else 'forbidden'}: {message or reason}"
    return f"{what}: {status} {reason}: {message}".rstrip(": ")


class ClusterClient:
    """One namespace of one cluster, through the current kubeconfig context or the in-cluster config."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, namespace: Optional[str] = None, context: Optional[str] = None,
                config_file: Optional[str] = None) -> "ClusterClient":
        """Log in like kubectl: the kubeconfig (`config_file`, else KUBECONFIG or ~/.kube/config) and its
        context (`context`, else the current one), else the pod's service account."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=config_file, context=context, client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=config_file)
            if context:
                active = next((c for c in contexts if c.get("name") == context), active)
            default_namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
        except (ConfigException, OSError) as kubeconfig_error:
            if context or config_file or "KUBERNETES_SERVICE_HOST" not in os.environ:
                raise NoClusterConfig(f"no usable Kubernetes configuration: {kubeconfig_error} "
                                      "(set KUBECONFIG, or run inside a pod)") from None
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException as error:
                raise NoClusterConfig(f"no usable Kubernetes configuration: {error}") from None
            default_namespace = (SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
                                 if SERVICE_ACCOUNT_NAMESPACE.exists() else "default")
        configuration.retries = 1
        return cls(client.ApiClient(configuration), namespace or default_namespace)

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)

    def experiment_ref(self, name: str) -> str:
        return f"{SINGULAR} {self.namespace}/{name}"

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Turn API and connection failures into a one-line ClusterError about `what`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as error:
            if error.status == 0:
                raise ClusterError(f"cannot reach the API server at {self.server}: {error.reason}") from None
            raise ClusterError(describe_api_error(what, error.status, str(error.reason), error.body),
                               error.status) from None
        except HTTPError as error:
            reason = getattr(error, "reason", None) or error
            raise ClusterError(f"cannot reach the API server at {self.server}: {reason}") from None

    @staticmethod
    def _json(response: Any) -> Any:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    # ---- LaneExperiments

    def get_experiment(self, name: str) -> dict[str, Any]:
        return self._read(self.experiment_ref(name), lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _preload_content=False))

    def find_experiment(self, name: str) -> Optional[dict[str, Any]]:
        return self._none_if_missing(lambda: self.get_experiment(name))

    def list_experiments(self) -> list[dict[str, Any]]:
        return self._objects_now(PLURAL, None)[0]

    def create_experiment(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            with self._api(self.experiment_ref(name)):
                return self._json(self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, dict(body), _preload_content=False))
        except ClusterError as error:
            raise self._api_missing(error) from None

    def _api_missing(self, error: ClusterError) -> ClusterError:
        # A 404 on a collection means the resource itself is not served (CRD missing) or the namespace is.
        if not error.not_found:
            return error
        return ClusterError(f"{self.server} does not serve {PLURAL}.{GROUP}/{VERSION} in namespace {self.namespace}: "
                            f"check the namespace exists and install the CRD (kubectl apply -f "
                            f"crds/{GROUP}_{PLURAL}.yaml, or the Helm chart)", 404)

    def delete_experiment(self, name: str) -> None:
        from kubernetes import client

        with self._api(self.experiment_ref(name)):
            self._json(self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"), _preload_content=False))

    def stop_experiment(self, name: str, why: str) -> dict[str, Any]:
        """Ask the operator to end the experiment's training now (the annotation a sweep's early stopping sets)."""
        from lanex_operator.api.models import STOP_ANNOTATION

        with self._api(self.experiment_ref(name)):
            return self._json(self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"annotations": {STOP_ANNOTATION: why}}},
                _preload_content=False))

    def watch_experiment(self, name: str, timeout: Optional[float] = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """The experiment's states as they change: ("CURRENT", obj) first, then MODIFIED/DELETED events.

        Uses the API's watch (no polling); resumes from the last resourceVersion when a stream ends
        and re-reads the object after 410 Gone. Raises WaitTimeout once `timeout` seconds have passed.
        """
        return self.watch_experiments(name, timeout)

    def watch_experiments(self, name: Optional[str] = None, timeout: Optional[float] = None,
                          synced: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        """Like `watch_experiment`, for one experiment (`name`) or every one in the namespace: a
        ("CURRENT", obj) per experiment first (then ("SYNCED", {}) when `synced`), then
        ADDED/MODIFIED/DELETED events (one experiment's watch ends with its DELETED)."""
        return self._watch(PLURAL, name, timeout, synced)

    def watch_sweep(self, name: str, timeout: Optional[float] = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """`watch_experiment` for a LaneSweep."""
        from lanex_operator.api.sweep import SWEEP_PLURAL

        return self._watch(SWEEP_PLURAL, name, timeout, False)

    def _watch(self, plural: str, name: Optional[str], timeout: Optional[float],
               synced: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        deadline = None if timeout is None else time.monotonic() + timeout
        current, version = self._objects_now(plural, name)
        for obj in current:
            yield "CURRENT", obj
        if synced:
            yield "SYNCED", {}
        ref = self._ref(plural, name) if name else f"{plural} in namespace {self.namespace}"
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for {ref}")
            server_timeout = 300 if remaining is None else max(1, int(remaining + 0.999))
            kwargs: dict[str, Any] = {"timeout_seconds": server_timeout,
                                      "_request_timeout": (10, server_timeout + 10), "deserialize": False}
            if name:
                kwargs["field_selector"] = f"metadata.name={name}"
            if version:
                kwargs["resource_version"] = version
            stream = watch.Watch()
            try:
                with self._api(ref), _stream_end():
                    for event in stream.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                               self.namespace, plural, **kwargs):
                        obj = event.get("object") or {}
                        if event.get("type") == "BOOKMARK":
                            version = obj.get("metadata", {}).get("resourceVersion") or version
                            continue
                        if name and (obj.get("metadata") or {}).get("name") != name:
                            continue
                        version = obj["metadata"].get("resourceVersion") or version
                        yield event["type"], obj
                        if name and event["type"] == "DELETED":
                            return
                        if deadline is not None and time.monotonic() >= deadline:
                            break
            except ClusterError as error:
                if error.status != GONE:
                    raise
                if name and self._none_if_missing(lambda: self._get(plural, name)) is None:
                    return
                found, version = self._objects_now(plural, name)  # history compacted: re-read, watch from now
                for obj in found:
                    yield "MODIFIED", obj
            finally:
                stream.stop()

    # ---- LaneSweeps (issue 14) and their trials

    def sweep_ref(self, name: str) -> str:
        return f"lanesweep {self.namespace}/{name}"

    def get_sweep(self, name: str) -> dict[str, Any]:
        from lanex_operator.api.sweep import SWEEP_PLURAL

        return self._read(self.sweep_ref(name), lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, SWEEP_PLURAL, name, _preload_content=False))

    def find_sweep(self, name: str) -> Optional[dict[str, Any]]:
        return self._none_if_missing(lambda: self.get_sweep(name))

    def list_sweeps(self) -> list[dict[str, Any]]:
        """The namespace's LaneSweeps; none where the LaneSweep CRD is not installed."""
        from lanex_operator.api.sweep import SWEEP_PLURAL

        try:
            with self._api(f"{SWEEP_PLURAL} in namespace {self.namespace}"):
                listing = self._json(self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, SWEEP_PLURAL, _preload_content=False))
        except ClusterError as error:
            if error.not_found:
                return []
            raise
        return sorted(listing.get("items") or [], key=lambda item: item["metadata"]["name"])

    def create_sweep(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from lanex_operator.api.sweep import SWEEP_PLURAL

        with self._api(self.sweep_ref(body["metadata"]["name"])):
            return self._json(self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, SWEEP_PLURAL, dict(body), _preload_content=False))

    def delete_sweep(self, name: str) -> None:
        from kubernetes import client

        from lanex_operator.api.sweep import SWEEP_PLURAL

        with self._api(self.sweep_ref(name)):
            self._json(self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, SWEEP_PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"), _preload_content=False))

    def list_trials(self, sweep: str) -> list[dict[str, Any]]:
        """The LaneExperiments of one sweep (label lanex.dev/sweep), by name."""
        from lanex_operator.api.sweep import SWEEP_LABEL

        with self._api(f"{PLURAL} of lanesweep {self.namespace}/{sweep}"):
            listing = self._json(self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, label_selector=f"{SWEEP_LABEL}={sweep}",
                _preload_content=False))
        return sorted(listing.get("items") or [], key=lambda item: item["metadata"]["name"])

    def _ref(self, plural: str, name: str) -> str:
        return self.experiment_ref(name) if plural == PLURAL else self.sweep_ref(name)

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        return self.get_experiment(name) if plural == PLURAL else self.get_sweep(name)

    def _objects_now(self, plural: str, name: Optional[str]) -> tuple[list[dict[str, Any]], Optional[str]]:
        """The object (or all of them) and the resourceVersion to watch from."""
        if name:
            current = self._get(plural, name)
            return [current], current["metadata"].get("resourceVersion")
        try:
            with self._api(f"{plural} in namespace {self.namespace}"):
                listing = self._json(self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, plural, _preload_content=False))
        except ClusterError as error:
            raise self._api_missing(error) from None
        items = sorted(listing.get("items") or [], key=lambda item: item["metadata"]["name"])
        return items, (listing.get("metadata") or {}).get("resourceVersion")

    # ---- children, pods, events

    def get_mpijob(self, name: str) -> Optional[dict[str, Any]]:
        return self._find(f"mpijob {self.namespace}/{name}", lambda: self.custom.get_namespaced_custom_object(
            MPI_GROUP, MPI_VERSION, self.namespace, MPI_PLURAL, name, _preload_content=False))

    def get_job(self, name: str) -> Optional[dict[str, Any]]:
        return self._find(f"job {self.namespace}/{name}", lambda: self.batch.read_namespaced_job(
            name, self.namespace, _preload_content=False))

    def get_claim(self, name: str) -> Optional[dict[str, Any]]:
        return self._find(f"persistentvolumeclaim {self.namespace}/{name}",
                          lambda: self.core.read_namespaced_persistent_volume_claim(
                              name, self.namespace, _preload_content=False))

    def _read(self, what: str, call: Any) -> dict[str, Any]:
        with self._api(what):
            return self._json(call())

    def _find(self, what: str, call: Any) -> Optional[dict[str, Any]]:
        return self._none_if_missing(lambda: self._read(what, call))

    @staticmethod
    def _none_if_missing(read: Any) -> Optional[dict[str, Any]]:
        """`read()`, or None when the API server answers 404."""
        try:
            return read()
        except ClusterError as error:
            if error.not_found:
                return None
            raise

    def list_pods(self, label_selector: str = "") -> list[dict[str, Any]]:
        with self._api(f"pods in namespace {self.namespace}"):
            listing = self._json(self.core.list_namespaced_pod(self.namespace, label_selector=label_selector or None,
                                                               _preload_content=False))
        return listing.get("items") or []

    def get_pod(self, name: str) -> Optional[dict[str, Any]]:
        return self._find(f"pod {self.namespace}/{name}", lambda: self.core.read_namespaced_pod(
            name, self.namespace, _preload_content=False))

    def watch_pods(self, label_selector: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Pods matching `label_selector` as they appear or change, for at most `timeout` seconds."""
        from kubernetes import watch

        stream = watch.Watch()
        try:
            with self._api(f"pods in namespace {self.namespace}"), _stream_end():
                for event in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                           label_selector=label_selector, timeout_seconds=max(1, int(timeout)),
                                           _request_timeout=(10, timeout + 10), deserialize=False):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        yield event["object"]
        finally:
            stream.stop()

    def pod_log(self, pod: str, container: Optional[str], follow: bool) -> Iterator[bytes]:
        """The container's log as it arrives (with `follow`, until the container ends)."""
        ref = f"log of pod {self.namespace}/{pod}" + (f" container {container}" if container else "")
        with self._api(ref):
            response = self.core.read_namespaced_pod_log(pod, self.namespace, container=container, follow=follow,
                                                         _preload_content=False)
        try:
            with self._api(ref):
                while True:  # read1: whatever has arrived, so a followed log shows each line at once
                    chunk = response.read1(65536)
                    if not chunk:
                        return
                    yield chunk
        finally:
            response.release_conn()

    def list_events(self) -> list[dict[str, Any]]:
        with self._api(f"events in namespace {self.namespace}"):
            listing = self._json(self.core.list_namespaced_event(self.namespace, _preload_content=False))
        return listing.get("items") or []

    # ---- snapshots and claims

    def list_snapshots(self, experiment: Optional[str] = None) -> list[dict[str, Any]]:
        selector = f"{EXPERIMENT_LABEL}={experiment}" if experiment else f"app.kubernetes.io/managed-by={MANAGED_BY}"
        with self._api(f"volumesnapshots in namespace {self.namespace}"):
            listing = self._json(self.custom.list_namespaced_custom_object(
                SNAPSHOT_API_GROUP, SNAPSHOT_VERSION, self.namespace, SNAPSHOT_PLURAL, label_selector=selector,
                _preload_content=False))
        return listing.get("items") or []

    def get_snapshot(self, name: str) -> dict[str, Any]:
        return self._read(f"volumesnapshot {self.namespace}/{name}", lambda: self.custom.get_namespaced_custom_object(
            SNAPSHOT_API_GROUP, SNAPSHOT_VERSION, self.namespace, SNAPSHOT_PLURAL, name, _preload_content=False))

    def find_snapshot(self, name: str) -> Optional[dict[str, Any]]:
        return self._none_if_missing(lambda: self.get_snapshot(name))

    def list_claims(self) -> list[dict[str, Any]]:
        with self._api(f"persistentvolumeclaims in namespace {self.namespace}"):
            listing = self._json(self.core.list_namespaced_persistent_volume_claim(self.namespace,
                                                                                    _preload_content=False))
        return listing.get("items") or []

    def create_claim(self, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._api(f"persistentvolumeclaim {self.namespace}/{body['metadata']['name']}"):
            return self._json(self.core.create_namespaced_persistent_volume_claim(
                self.namespace, dict(body), _preload_content=False))


@contextmanager
def _stream_end() -> Iterator[None]:
    """A watch stream that the server kept open too long or cut off simply ends; the caller decides what next."""
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    try:
        yield
    except (ReadTimeoutError, ProtocolError):
        pass
