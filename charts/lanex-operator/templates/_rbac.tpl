{{/*
The operator's permissions, in ONE place (tests/chart_rbac.py reads them back from the
rendered Roles). Least privilege: only the verbs the operator uses; no wildcards, no peering
resources (the operator runs standalone: one replica, strategy Recreate).
*/}}

{{/* Namespaced resources: a ClusterRole when serving all namespaces, else a Role per namespace. */}}
{{- define "lanex-operator.rbac.namespacedRules" -}}
# The experiments: kopf watches them, patches progress annotations and the status.
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments/finalizers"]
  verbs: ["update"]
# The dataset volume (created, or restored from a snapshot; deleted per retention).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The download/prepare Job.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Termination messages and logs of failed pods, surfaced in the experiment's status.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The training job (kubeflow mpi-operator v2beta1).
- apiGroups: ["kubeflow.org"]
  resources: ["mpijobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The result snapshots (external snapshotter v1).
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Events on the experiments (kopf posts core events; newer clients events.k8s.io).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Cluster-scoped resources: always a ClusterRole, also when serving a list of namespaces. */}}
{{- define "lanex-operator.rbac.clusterRules" -}}
# The dataset PV is patched to ReadWriteMany when its claim is not RWX (TR-4896 step 3).
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "patch"]
# Preflight: the classes an experiment names exist.
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotclasses"]
  verbs: ["get", "list"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
# Preflight: the RUN:ai project namespace runai-<project> exists (it may not be a served one).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
# kopf scans the CRDs to resolve the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}
