{{/*
Naming, as meshplane names a revision's objects: revision "" or "default" is the default revision,
whose objects carry no suffix (istiod, istio, istio-sidecar-injector); any other revision R gives
istiod-R, istio-R, istio-sidecar-injector-R.
*/}}

{{/* The value of the istio.io/rev label: the revision, "default" when none is given. */}}
{{- define "istiod.revision" -}}
{{- .Values.revision | default "default" -}}
{{- end }}

{{/* "" for the default revision, "-<rev>" otherwise. */}}
{{- define "istiod.suffix" -}}
{{- $rev := include "istiod.revision" . -}}
{{- if ne $rev "default" }}-{{ $rev }}{{ end -}}
{{- end }}

{{/* Deployment, Service, ServiceAccount, Role and RoleBinding name. */}}
{{- define "istiod.name" -}}
istiod{{ include "istiod.suffix" . }}
{{- end }}

{{/* ClusterRole and ClusterRoleBinding name (cluster-scoped: the namespace keeps installs apart). */}}
{{- define "istiod.clusterRoleName" -}}
istiod-clusterrole{{ include "istiod.suffix" . }}-{{ .Release.Namespace }}
{{- end }}

{{/*
"true" when this release is the default revision: `defaultRevision` names it, or (defaultRevision
unset) the revision itself is the default one. Only the default revision renders the legacy
`namespace.` and `object.` injection webhooks.
*/}}
{{- define "istiod.isDefault" -}}
{{- eq (include "istiod.revision" .) (.Values.defaultRevision | default "default") -}}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "istiod.labels" -}}
istio.io/rev: {{ include "istiod.revision" . | quote }}
release: {{ .Release.Name | quote }}
app.kubernetes.io/name: istiod
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end }}

{{/* The address proxies dial for xDS and the CA. */}}
{{- define "istiod.discoveryAddress" -}}
{{ include "istiod.name" . }}.{{ .Release.Namespace }}.svc:15012
{{- end }}

{{/* Ports and selector of the Services that reach this revision's pods. */}}
{{- define "istiod.servicePorts" -}}
ports:
  - name: grpc-xds
    port: 15010
    targetPort: 15010
    protocol: TCP
  - name: https-dns
    port: 15012
    targetPort: 15012
    protocol: TCP
  - name: https-webhook
    port: 443
    targetPort: 15017
    protocol: TCP
  - name: http-monitoring
    port: 15014
    targetPort: 15014
    protocol: TCP
selector:
  app: istiod
  istio.io/rev: {{ include "istiod.revision" . | quote }}
{{- end }}
