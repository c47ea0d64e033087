{{/*
Names, labels and the cross-field checks the values schema cannot express.
*/}}

{{- define "lanex-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name of every object: "<release>" if it already names the chart, else "<release>-lanex-operator". */}}
{{- define "lanex-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lanex-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lanex-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lanex-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lanex-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lanex
{{- end -}}

{{- define "lanex-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator's container args: exactly what `lanex operator` takes. */}}
{{- define "lanex-operator.args" -}}
- operator
- --liveness-port={{ .Values.livenessPort }}
- --metrics-port={{ .Values.metrics.port }}
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end -}}

{{/*
Rules between values that JSON schema (draft-07) cannot state clearly; each failure names the keys.
Included once, by deployment.yaml (always rendered): `helm template`, `helm lint` and `helm install` fail alike.
*/}}
{{- define "lanex-operator.validate" -}}
{{- if eq (int .Values.livenessPort) (int .Values.metrics.port) -}}
{{- fail (printf "livenessPort and metrics.port must differ (both are %v)" .Values.livenessPort) -}}
{{- end -}}
{{- if and .Values.azure.workloadIdentity.clientId .Values.azure.credentialsSecret -}}
{{- fail "azure.workloadIdentity.clientId and azure.credentialsSecret are exclusive: set at most one" -}}
{{- end -}}
{{- if .Values.storageSetup.enabled -}}
{{- $backend := .Values.storageSetup.backend -}}
{{- $missing := list -}}
{{- range $key := list "subscriptionID" "location" "virtualNetwork" "subnet" "exportRule" -}}
{{- if not (get $backend $key) -}}
{{- $missing = append $missing (printf "storageSetup.backend.%s" $key) -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "storageSetup.enabled needs %s (exportRule: the CIDR of the cluster's node subnet, e.g. 10.224.0.0/16; never 0.0.0.0/0)" (join ", " $missing)) -}}
{{- end -}}
{{- if and $backend.credentialsSecret $backend.useManagedIdentity -}}
{{- fail "storageSetup.backend.credentialsSecret and storageSetup.backend.useManagedIdentity are exclusive: set one" -}}
{{- end -}}
{{- if not (or $backend.credentialsSecret $backend.useManagedIdentity) -}}
{{- fail "storageSetup.backend: set credentialsSecret (an existing Secret with clientID and clientSecret) or useManagedIdentity: true" -}}
{{- end -}}
{{- if and $backend.credentialsSecret (not $backend.tenantID) -}}
{{- fail "storageSetup.backend.tenantID is required with storageSetup.backend.credentialsSecret" -}}
{{- end -}}
{{- end -}}
{{- end -}}
