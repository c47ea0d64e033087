{{/*
The operator's permissions, in ONE place (tests/chart_rbac.py reads them back from the rendered
Roles). Exactly what the operator uses: tests/test_rbac_matches_operator.py runs the real operator
through its lifecycle scenarios against an API server that records every request, and fails on a
request these rules do not grant or on a rule no request used. No wildcards, no peering resources
(the operator runs standalone: one replica, strategy Recreate). Users' own reads (`lanex logs`
follows pods/log) belong to the users' roles; the operator reads only the launcher's log tail.
*/}}

{{/* Namespaced resources: a ClusterRole when serving all namespaces, else a Role per namespace. */}}
{{- define "lanex-operator.rbac.namespacedRules" -}}
# The experiments: kopf lists and watches them and patches its finalizer and progress annotations;
# the operator writes only the status subresource (it never changes a spec).
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion: true (kopf.adopt); where the
# OwnerReferencesPermissionEnforcement admission plugin runs, that needs update on the owner's finalizers.
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments/finalizers"]
  verbs: ["update"]
# Sweeps: kopf lists, watches and patches them (finalizer, annotations; the operator annotates the spec a
# sweep started with); the operator writes their status. A sweep's trials are LaneExperiments it creates,
# reads back after a conflict, annotates lanex.dev/stop (early stopping), and deletes per retention.
- apiGroups: ["lanex.dev"]
  resources: ["lanesweeps"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["lanex.dev"]
  resources: ["lanesweeps/status"]
  verbs: ["patch"]
- apiGroups: ["lanex.dev"]
  resources: ["lanesweeps/finalizers"]
  verbs: ["update"]
- apiGroups: ["lanex.dev"]
  resources: ["laneexperiments"]
  verbs: ["get", "create", "delete"]
# The dataset volume: created (or restored from a snapshot), read when it already exists,
# annotated lanex.dev/prepared, deleted by retention Delete, listed for snapshots still in use.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The download/prepare Job (deleted with the experiment by the garbage collector, not by the operator).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
# The termination messages of finished pods (results, or why a step failed), by label selector;
# the launcher pod is found the same way for progress reads. Deleted on a stall only where the chart
# allows it (stallRestart.deleteLauncherPods) and the experiment asks for it (stallAction: Restart;
# its launcher Job starts a new one).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"{{ if .Values.stallRestart.deleteLauncherPods }}, "delete"{{ end }}]
{{- if .Values.credentials.optInLabel }}
# The opt-in label of a Secret or ServiceAccount an experiment names (credentials.optInLabel): one
# get by name, asked as PartialObjectMetadata, so a Secret's values never reach the operator. No
# list or watch: it cannot enumerate them. (Creating Jobs that mount Secrets already lets the
# operator use any Secret of a served namespace; the label is what limits it to opted-in ones.)
- apiGroups: [""]
  resources: ["secrets", "serviceaccounts"]
  verbs: ["get"]
{{- end }}
# Training progress: the tail of the launcher's log (tailLines/limitBytes, never followed).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The training job (kubeflow mpi-operator v2beta1; garbage-collected with the experiment; deleted when
# a sweep stops the experiment early).
- apiGroups: ["kubeflow.org"]
  resources: ["mpijobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Kueue (scheduler.type kueue): the experiment's LocalQueue must exist (preflight), else Kueue would keep
# its MPIJob suspended for ever.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
# The result snapshots (external snapshotter v1): the restore source is read, retention Delete deletes.
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Events about the experiments (kopf posts core/v1 Events); the provisioner's Warning on a
# dataset volume that never binds is read into the failure message.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end -}}

{{/* Cluster-scoped resources: always a ClusterRole, also when serving a list of namespaces. */}}
{{- define "lanex-operator.rbac.clusterRules" -}}
# The dataset PV is patched to ReadWriteMany when its claim is not RWX (TR-4896 step 3).
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "patch"]
# Preflight: the classes an experiment uses exist; for an existing claim, the snapshot class is the
# one of its volume's CSI driver marked default (listed, as the snapshot controller chooses).
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotclasses"]
  verbs: ["get", "list"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get"]
# Preflight: the RUN:ai project namespace runai-<project> exists (it may not be a served one).
{{- if .Values.watchNamespaces }}
# Serving a list of namespaces, kopf also lists and watches namespaces, so that a listed namespace
# created after start-up is served without a restart.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- else }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end }}
# kopf scans and watches the CRDs to resolve the resources it serves; the preflight reads the
# MPIJob CRD to see which mpi-operator features it declares (launcherCreationPolicy, suspend).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}
