{{/*
Names and labels shared by every template of the chart.
*/}}

{{/* The name of the operator's objects: the release name, with the chart name in front unless the release name has it already. */}}
{{- define "duomq-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods; they never change over upgrades. */}}
{{- define "duomq-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "duomq-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "duomq-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator image: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "duomq-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The operator's permissions, as RBAC rules. The same rules go into a ClusterRole
(every namespace) or a Role (watchNamespace). None of them names a
cluster-scoped resource, so a namespaced install needs no ClusterRole at all.
*/}}
{{- define "duomq-operator.rules" -}}
# BrokerGroups: watched and given a finalizer; their status is the operator's report.
- apiGroups: ["duomq.io"]
  resources: ["brokergroups"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["duomq.io"]
  resources: ["brokergroups/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["duomq.io"]
  resources: ["brokergroups/finalizers"]
  verbs: ["update"]
# What a BrokerGroup renders to: broker config, credentials, Services, the pods' service account and volumes.
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Broker pods: watched for failures; labelled with their role (duomq.io/role) by the operator;
# deleted one at a time by rolling upgrades (the StatefulSets update on delete).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The broker pods' Roles and RoleBindings (their access to their group's Lease).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# One Lease per group arbitrates the live role. The operator grants the broker
# pods lease access, and Kubernetes lets it grant only what it holds itself.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Events about BrokerGroups (failovers, switchovers, invalid specs).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The Prometheus job of the broker targets: the PodMonitor's default, <namespace>/<name>. */}}
{{- define "duomq-operator.brokerPodMonitor" -}}
{{- include "duomq-operator.fullname" . }}-brokers
{{- end }}

{{/* The namespaces the broker alerts look at: a label matcher, empty when every namespace. */}}
{{- define "duomq-operator.brokerNamespaceMatcher" -}}
{{- with .Values.watchNamespace }}namespace="{{ . }}"{{ end }}
{{- end }}
