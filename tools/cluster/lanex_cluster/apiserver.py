"""kube-apiserver with TLS, RBAC and service-account tokens, flags after envtest and kwokctl."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .build import binary
from .certs import KeyPair
from .process import ManagedProcess, free_port, https_ok

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTROL_PLANE_USERS = ["system:kube-scheduler", "system:kube-controller-manager", "system:apiserver"]
# Controllers running as ServiceAccounts: kube-system's, and Kueue's (lanex_cluster/kueue.py).
CONTROLLER_GROUPS = ["system:serviceaccounts:kube-system", "system:serviceaccounts:kueue-system"]
EVENTS = [{"group": "", "resources": ["events"]}, {"group": "events.k8s.io", "resources": ["events"]}]


@dataclass
class ApiServer:
    state_dir: Path
    etcd_url: str
    ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    service_account_key: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    def _audit_policy(self) -> Path:
        # Who called what, when: the RBAC tests compare the operator's calls with what the chart
        # grants; the benchmarks count requests and time reactions from a controller's write to
        # the operator's next call.
        path = self.state_dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [
                # Heartbeats are the loudest and tell nothing about who moved what.
                {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
                # The control plane's own reads and Events; its writes (a claim bound, a Job
                # complete) stay.
                {"level": "None", "users": CONTROL_PLANE_USERS, "verbs": ["get", "list", "watch"]},
                {"level": "None", "userGroups": CONTROLLER_GROUPS, "verbs": ["get", "list", "watch"]},
                {"level": "None", "users": CONTROL_PLANE_USERS, "resources": EVENTS},
                {"level": "None", "userGroups": CONTROLLER_GROUPS, "resources": EVENTS},
                {"level": "Metadata"},
            ],
        }))
        return path

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            "kube-apiserver",
            [str(binary("kube-apiserver")),
             f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             # The `kubernetes` Service gets no endpoints: a loopback address may not be published,
             # and nothing in this cluster (pods run nothing) would dial it.
             "--endpoint-reconciler-type=none",
             f"--secure-port={self.port}", f"--tls-cert-file={self.serving.cert}",
             f"--tls-private-key-file={self.serving.key}", f"--client-ca-file={self.ca.cert}",
             "--authorization-mode=RBAC", "--allow-privileged=true",
             f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
             f"--service-account-issuer={self.url}",
             f"--service-account-key-file={self.service_account_key}",
             f"--service-account-signing-key-file={self.service_account_key}",
             # The apiserver fetches pod logs from the "kubelet" (kwok's server) with this identity.
             f"--kubelet-client-certificate={self.admin.cert}", f"--kubelet-client-key={self.admin.key}",
             "--kubelet-preferred-address-types=InternalIP",
             # Webhooks and aggregated APIs (Kueue) are reached on 127.0.0.1, not through Services.
             "--enable-aggregator-routing=true",
             f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
             "--audit-log-format=json", "--audit-log-maxbackup=1", "--audit-log-maxsize=512",
             "--profiling=false", "--v=1"],
            self.state_dir,
            ready=lambda: https_ok(f"{self.url}/readyz", self.ca.cert, (self.admin.cert, self.admin.key)),
        )
