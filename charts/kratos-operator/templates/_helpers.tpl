{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "kratos-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. It always contains the release name, so two releases in one
cluster never share a cluster-scoped name (ClusterRole, ClusterRoleBinding).
*/}}
{{- define "kratos-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kratos-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "kratos-operator.labels" -}}
helm.sh/chart: {{ include "kratos-operator.chart" . }}
{{ include "kratos-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kratos-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (stable across upgrades).
*/}}
{{- define "kratos-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kratos-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount.
*/}}
{{- define "kratos-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kratos-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: by digest when image.digest is set (the tag is then ignored), else by tag.
*/}}
{{- define "kratos-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The timing fields of a probe, in a fixed order (the probe's handler is the chart's). A field set
to null in the values is left out, so Kubernetes' default applies.
*/}}
{{- define "kratos-operator.probeTiming" -}}
{{- range $field := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "successThreshold" "failureThreshold" "terminationGracePeriodSeconds" }}
{{- if and (hasKey $ $field) (not (kindIs "invalid" (index $ $field))) }}
{{ $field }}: {{ index $ $field }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Rules on the operator's own custom resources, shared by the ClusterRole and the per-namespace Roles.
*/}}
{{- define "kratos-operator.namespacedRules" -}}
# The three kinds the operator reconciles: list and watch feed the controllers' caches; get reads
# one object fresh (a RecoveryRequest reads its Identity's status.identityId); patch adds and
# removes the Identity finalizer kratos-operator.dev/cleanup (JSON patch). No update, create or
# delete: the operator never replaces, creates or deletes these objects.
- apiGroups: ["kratos-operator.dev"]
  resources: ["identities", "identityschemarefs", "recoveryrequests"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written through the status subresource only, by server-side apply (a patch).
- apiGroups: ["kratos-operator.dev"]
  resources: ["identities/status", "identityschemarefs/status", "recoveryrequests/status"]
  verbs: ["patch"]
# A RecoveryRequest owns the Secret it writes (ownerReference with blockOwnerDeletion, so
# deleting the request deletes the Secret) and an Identity carries the cleanup finalizer. Where
# the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift and others), setting
# blockOwnerDeletion requires update on the owner's finalizers subresource.
- apiGroups: ["kratos-operator.dev"]
  resources: ["identities/finalizers", "recoveryrequests/finalizers"]
  verbs: ["update"]
# Secrets, read side: an Identity's password comes from the Secret named in
# spec.credentials.password.secretRef / hashedSecretRef. The operator watches Secrets (metadata
# only) to re-import a password when its Secret changes, and reads the one referenced key with get.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Secrets, write side: a RecoveryRequest writes the recovery link or code into a Secret it owns
# (server-side apply: create + patch), clears its data when the link expires (patch) and deletes
# the Secret it wrote when spec.secretName changes (delete, only when the Secret's ownerReference
# names that request). It never updates or deletes a Secret it does not own; `update` is not granted.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch", "delete"]
# Events about the objects it reconciles (events.k8s.io/v1; repeated Events are patched as series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Rules of the small ClusterRole that remains in every mode.
*/}}
{{- define "kratos-operator.crdRules" -}}
# /readyz answers ready only when the operator's CRDs are installed: it reads their definitions.
# CustomResourceDefinitions are cluster-scoped, hence a ClusterRole even when watchNamespaces is set.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list"]
{{- end }}

{{/*
Rule of the Namespace read, in the cluster-wide ClusterRole of either mode (Namespaces are
cluster-scoped, so a Role cannot grant it). Rendered only when tenancy.enforce is true: without
enforcement the operator reads no Namespace. In namespace mode it is limited by resourceNames to
the watched namespaces.
*/}}
{{- define "kratos-operator.namespaceRules" -}}
{{- if .Values.tenancy.enforce }}
# Tenancy: a cluster admin's opt-ins for a namespace are on its Namespace object (labels
# kratos-operator.dev/allow-adoption and kratos-operator.dev/allow-recovery-by-id, annotation
# kratos-operator.dev/identifier-patterns). The operator reads the Namespace of the object it
# reconciles with get, one at a time; it never lists, watches or changes Namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  {{- with .Values.watchNamespaces }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: ["get"]
{{- end }}
{{- end }}

{{/*
The operator's ServiceAccount as it appears in request.userInfo.username.
*/}}
{{- define "kratos-operator.serviceAccountUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "kratos-operator.serviceAccountName" .) }}
{{- end }}

{{/*
matchResources of the tenancy policies' bindings: every namespace in cluster mode, the watched
namespaces in namespace mode.
*/}}
{{- define "kratos-operator.tenantNamespaces" -}}
matchResources:
{{- if .Values.watchNamespaces }}
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson .Values.watchNamespaces }}
{{- else }}
  namespaceSelector: {}
{{- end }}
{{- end }}

{{/*
The TCP port a URL connects to: its explicit port, else 443 for https and 80 for http.
*/}}
{{- define "kratos-operator.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq $url.scheme "https" }}443{{ else }}80{{ end }}
{{- end }}

{{/*
The ports of the Kratos APIs the NetworkPolicy lets the operator reach, as a JSON list:
networkPolicy.kratos.ports when set; else the ports of kratos.adminUrl and kratos.publicUrl, and
Kratos' default public port 4433 when kratos.publicUrl is empty (the operator then follows the
admin port's redirect of schema reads to the public API).
*/}}
{{- define "kratos-operator.kratosPorts" -}}
{{- $ports := list }}
{{- if .Values.networkPolicy.kratos.ports }}
{{- range .Values.networkPolicy.kratos.ports }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- else }}
{{- $ports = append $ports (include "kratos-operator.urlPort" .Values.kratos.adminUrl | int) }}
{{- if .Values.kratos.publicUrl }}
{{- $ports = append $ports (include "kratos-operator.urlPort" .Values.kratos.publicUrl | int) }}
{{- else }}
{{- $ports = append $ports 4433 }}
{{- end }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}
