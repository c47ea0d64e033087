"""Kueue v0.17 (sigs.k8s.io/kueue, cmd/kueue): quota-based admission of suspended jobs (MPIJob, Job).

It runs as it would outside a cluster, everything else as upstream's kustomize deployment
(`config/default`) makes it: the CRDs, the manager's RBAC (Kueue calls the apiserver with a token
of its own ServiceAccount) and the webhook configurations are read from the module we built, with
`namePrefix: kueue-` and `namespace: kueue-system` applied as kustomize would. Only the webhooks'
and the conversion webhooks' `clientConfig` change: a `url` on 127.0.0.1 with the cluster's CA as
`caBundle` instead of a Service, so the apiserver really calls Kueue (on every MPIJob, Job and Pod
it admits, and to convert v1beta1 <-> v1beta2).

Two upstream constants stand in the way and are worked around without touching the machine:
- with `internalCertManagement` off, Kueue reads its metrics certificate from the fixed path
  `/etc/kueue/metrics/certs` (cmd/kueue/main.go): it runs in a mount namespace of its own, whose
  `/etc` is an overlay adding that directory (the host's `/etc` is unchanged);
- the VisibilityOnDemand API is a second apiserver reading its certificate from `/visibility`;
  nothing here asks for pending-workload visibility, so its feature gate is off.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .build import COMPONENTS, binary, module_source
from .certs import KeyPair
from .kubeconfig import _b64
from .process import ManagedProcess, free_port, http_ok

MODULE = "sigs.k8s.io/kueue"
NAMESPACE = "kueue-system"
NAME_PREFIX = "kueue-"  # config/default/kustomization.yaml
SERVICE_ACCOUNT = NAME_PREFIX + "controller-manager"
# The integrations lanex uses: its MPIJobs (scheduler.type kueue) and Jobs (Kueue's own examples).
FRAMEWORKS = ("batch/job", "kubeflow.org/mpijob")
# Upstream's Configuration hard-codes this when internalCertManagement is off (see the docstring).
METRICS_CERT_DIR = Path("kueue") / "metrics" / "certs"


def kueue_source() -> Path:
    return module_source(COMPONENTS["kueue"], MODULE)


def _components() -> Path:
    return kueue_source() / "config" / "components"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _with_kustomize_names(doc: dict[str, Any]) -> dict[str, Any]:
    """`namePrefix: kueue-` and `namespace: kueue-system`, applied to one RBAC object as kustomize does."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = NAME_PREFIX + doc["metadata"]["name"]
    if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
        doc["metadata"]["namespace"] = NAMESPACE
    if "roleRef" in doc:
        doc["roleRef"]["name"] = NAME_PREFIX + doc["roleRef"]["name"]
    for subject in doc.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["name"] = NAME_PREFIX + subject["name"]
            subject["namespace"] = NAMESPACE
    return doc


def rbac_objects() -> list[dict[str, Any]]:
    """Kueue's ServiceAccount with the roles bound to it (config/components/rbac), as deployed.

    The aggregated editor/viewer roles for users are left out: nothing here binds them.
    """
    directory = _components() / "rbac"
    docs = [doc for name in _kustomization(directory)["resources"] for doc in _documents(directory / name)]
    bindings = [doc for doc in docs if doc["kind"].endswith("Binding")]
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    wanted = [doc for doc in docs if doc["kind"] == "ServiceAccount" or doc in bindings
              or (doc["kind"], doc["metadata"]["name"]) in bound]
    return [_with_kustomize_names(doc) for doc in wanted]


def _url_client_config(client_config: Mapping[str, Any], base_url: str, ca_bundle: str) -> dict[str, Any]:
    path = (client_config.get("service") or {}).get("path", "")
    return {"url": f"{base_url}{path}", "caBundle": ca_bundle}


def crd_objects(base_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The CRDs of config/components/crd with its conversion-webhook patches, the webhook at `base_url`."""
    directory = _components() / "crd"
    kustomization = _kustomization(directory)
    crds = {doc["metadata"]["name"]: doc
            for name in kustomization["resources"] for doc in _documents(directory / name)}
    for patch in kustomization.get("patches", []):
        for doc in _documents(directory / patch["path"]):
            conversion = copy.deepcopy(doc["spec"]["conversion"])
            webhook = conversion["webhook"]
            webhook["clientConfig"] = _url_client_config(webhook["clientConfig"], base_url, ca_bundle)
            crds[doc["metadata"]["name"]]["spec"]["conversion"] = conversion
    return list(crds.values())


def _merge_webhook_patches(configs: list[dict[str, Any]], patches: list[dict[str, Any]]) -> None:
    """config/components/webhook's strategic-merge patches: fields merged into webhooks by name."""
    by_kind = {config["kind"]: config for config in configs}
    for patch in patches:
        target = by_kind[patch["kind"]]
        webhooks = {webhook["name"]: webhook for webhook in target["webhooks"]}
        for change in patch["webhooks"]:
            webhooks[change["name"]].update({k: v for k, v in change.items() if k != "name"})


def webhook_configurations(base_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The Mutating/ValidatingWebhookConfigurations of config/components/webhook, served at `base_url`.

    Every webhook upstream registers is kept, those of integrations not enabled too: Kueue answers
    them with its no-op webhook, as in a cluster.
    """
    directory = _components() / "webhook"
    kustomization = _kustomization(directory)
    configs = [doc for doc in _documents(directory / "manifests.yaml")]
    _merge_webhook_patches(configs, [yaml.safe_load(p["patch"]) for p in kustomization.get("patches", [])])
    for config in configs:
        config["metadata"]["name"] = NAME_PREFIX + config["metadata"]["name"]
        for webhook in config["webhooks"]:
            webhook["clientConfig"] = _url_client_config(webhook["clientConfig"], base_url, ca_bundle)
    return configs


def crd_names(crds: list[dict[str, Any]]) -> list[str]:
    return [crd["metadata"]["name"] for crd in crds]


def resource_flavor_probe() -> dict[str, Any]:
    """An object that the apiserver admits only through Kueue's webhooks (created with a dry run)."""
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": "lanex-cluster-webhook-probe"}}


def _mount_namespace(etc_layer: Path) -> list[str]:
    """A command prefix running the program in a mount namespace whose /etc is `etc_layer` over /etc.

    Root needs only a mount namespace; anyone else gets a user namespace in which they are root.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        raise FileNotFoundError("unshare (util-linux) is needed to give Kueue its metrics certificate path")
    namespaces = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    script = 'mount -t overlay overlay -o "lowerdir=$0:/etc" /etc && exec "$@"'
    return [unshare, *namespaces, "sh", "-c", script, str(etc_layer)]


@dataclass
class Kueue:
    state_dir: Path
    ca_cert: Path
    serving: KeyPair  # issued by the cluster CA for 127.0.0.1: webhooks and metrics
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def directory(self) -> Path:
        return self.state_dir / "kueue"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    @property
    def ca_bundle(self) -> str:
        return _b64(self.ca_cert)

    def crds(self) -> list[dict[str, Any]]:
        return crd_objects(self.webhook_url, self.ca_bundle)

    def webhooks(self) -> list[dict[str, Any]]:
        return webhook_configurations(self.webhook_url, self.ca_bundle)

    def configuration(self) -> dict[str, Any]:
        """Kueue's config API (config.kueue.x-k8s.io/v1beta2 Configuration)."""
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self._certs("webhook"))},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": list(FRAMEWORKS)},
            "clientConnection": {"qps": 50, "burst": 100},
            "featureGates": {"VisibilityOnDemand": False},
        }

    def _certs(self, name: str) -> Path:
        return self.directory / name

    def _write_files(self) -> Path:
        etc_layer = self.directory / "etc"
        for directory in (self._certs("webhook"), etc_layer / METRICS_CERT_DIR):
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.serving.cert, directory / "tls.crt")
            shutil.copyfile(self.serving.key, directory / "tls.key")
        config = self.directory / "config.yaml"
        config.write_text(yaml.safe_dump(self.configuration(), sort_keys=False))
        return etc_layer

    def process(self, kubeconfig: Path) -> ManagedProcess:
        etc_layer = self._write_files()
        return ManagedProcess(
            "kueue",
            [*_mount_namespace(etc_layer), str(binary("kueue")), f"--config={self.directory / 'config.yaml'}",
             f"--kubeconfig={kubeconfig}"],
            self.state_dir,
            # readyz turns true once the webhook server listens (cmd/kueue setupProbeEndpoints).
            ready=lambda: http_ok(f"http://127.0.0.1:{self.health_port}/readyz"),
        )

