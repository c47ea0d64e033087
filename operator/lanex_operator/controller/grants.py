"""What the operator may use beyond the children it creates, as the chart's values grant it.

Why it exists: the operator mounts Secrets and runs Jobs as ServiceAccounts that an experiment names, and
may delete a stalled launcher pod. Each is someone else's: a Secret belongs to the team that made it, a
ServiceAccount's identity to its workload, a pod to its Job. So each is opt-in, decided by its owner (a
label on the object) or by whoever installs the operator (the chart's values), never by whoever may create
a LaneExperiment. This module holds those grants, read once from the environment the chart sets:

    LANEX_OPERATOR_CREDENTIALS_BY_LABEL     true: a Secret or ServiceAccount labelled OPT_IN_LABEL=true is usable
                                            (the operator reads their metadata only; chart: credentials.optInLabel)
    LANEX_OPERATOR_USABLE_SECRETS           namespace/name,... usable whatever their labels (credentials.secrets)
    LANEX_OPERATOR_USABLE_SERVICE_ACCOUNTS  namespace/name,... (credentials.serviceAccounts)
    LANEX_OPERATOR_DELETE_LAUNCHER_PODS     true: stallAction Restart may delete the launcher pod
                                            (stallRestart.deleteLauncherPods; RBAC `delete pods` only then)

Unset, each is what the chart's default is, so an operator started by hand behaves as a default install.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

OPT_IN_LABEL = "lanex.dev/usable-by-experiments"
OPT_IN_VALUE = "true"
CREDENTIALS_BY_LABEL_VARIABLE = "LANEX_OPERATOR_CREDENTIALS_BY_LABEL"
USABLE_SECRETS_VARIABLE = "LANEX_OPERATOR_USABLE_SECRETS"
USABLE_SERVICE_ACCOUNTS_VARIABLE = "LANEX_OPERATOR_USABLE_SERVICE_ACCOUNTS"
DELETE_LAUNCHER_PODS_VARIABLE = "LANEX_OPERATOR_DELETE_LAUNCHER_PODS"
# Where each grant is set in the chart, for messages that say how to change it.
CHART_VALUES = {
    CREDENTIALS_BY_LABEL_VARIABLE: "credentials.optInLabel",
    USABLE_SECRETS_VARIABLE: "credentials.secrets",
    USABLE_SERVICE_ACCOUNTS_VARIABLE: "credentials.serviceAccounts",
    DELETE_LAUNCHER_PODS_VARIABLE: "stallRestart.deleteLauncherPods",
}


@dataclasses.dataclass(frozen=True)
class Grants:
    """The opt-ins in effect (defaults: the chart's)."""

    credentials_by_label: bool = True
    usable_secrets: frozenset[str] = frozenset()  # "namespace/name"
    usable_service_accounts: frozenset[str] = frozenset()
    delete_launcher_pods: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Grants:
        """Read the LANEX_OPERATOR_* grants; a malformed value raises ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        default = cls()
        return cls(
            credentials_by_label=_flag(environ, CREDENTIALS_BY_LABEL_VARIABLE, default.credentials_by_label),
            usable_secrets=_names(environ, USABLE_SECRETS_VARIABLE),
            usable_service_accounts=_names(environ, USABLE_SERVICE_ACCOUNTS_VARIABLE),
            delete_launcher_pods=_flag(environ, DELETE_LAUNCHER_PODS_VARIABLE, default.delete_launcher_pods),
        )

    def listed(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the chart's values list `namespace/name` (kind Secret or ServiceAccount)."""
        names = self.usable_secrets if kind == "Secret" else self.usable_service_accounts
        return f"{namespace}/{name}" in names

    def how_to_allow(self, kind: str, namespace: str, name: str) -> str:
        """What the message tells a user whose experiment names an object that is not opted in."""
        plural = "secret" if kind == "Secret" else "serviceaccount"
        variable = USABLE_SECRETS_VARIABLE if kind == "Secret" else USABLE_SERVICE_ACCOUNTS_VARIABLE
        listing = f"or have the operator's installer list {namespace}/{name} in the chart value {CHART_VALUES[variable]}"
        if not self.credentials_by_label:
            return (f"{listing} (the operator does not read opt-in labels: chart value "
                    f"{CHART_VALUES[CREDENTIALS_BY_LABEL_VARIABLE]} is false)").removeprefix("or ")
        return (f"its owner opts it in with the label {OPT_IN_LABEL}: \"{OPT_IN_VALUE}\" (kubectl label {plural} "
                f"{name} -n {namespace} {OPT_IN_LABEL}={OPT_IN_VALUE}), {listing}")


def _flag(environ: Mapping[str, str], variable: str, default: bool) -> bool:
    raw = environ.get(variable)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{variable}={raw!r}: expected true or false")


def _names(environ: Mapping[str, str], variable: str) -> frozenset[str]:
    entries = [entry.strip() for entry in (environ.get(variable) or "").split(",") if entry.strip()]
    for entry in entries:
        namespace, slash, name = entry.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ValueError(f"{variable}: {entry!r} is not namespace/name")
    return frozenset(entries)
