{{/*
The webhook list of one injector configuration. Argument: a dict with
  root:    the chart's context
  selects: the istio.io/rev value the rev.* webhooks select (the revision, or a tag)
  legacy:  whether to add the default revision's namespace./object. (and auto.) webhooks
Every webhook calls this revision's Service.
*/}}
{{- define "istiod.webhooks" }}
{{- $core := dict
  "service" (include "istiod.name" .root)
  "namespace" .root.Release.Namespace
  "reinvocationPolicy" .root.Values.sidecarInjectorWebhook.reinvocationPolicy
}}
{{- /* The namespace names this revision (and no legacy label, which wins); the pod does not opt out. */}}
{{- include "istiod.webhook" (merge (dict "prefix" "rev.namespace.") $core) }}
  namespaceSelector:
    matchExpressions:
      - key: istio.io/rev
        operator: In
        values: [{{ .selects | quote }}]
      - key: istio-injection
        operator: DoesNotExist
  objectSelector:
    matchExpressions:
      - key: sidecar.istio.io/inject
        operator: NotIn
        values: ["false"]
{{- /* The namespace has no injection label; the pod names this revision and does not opt out. */}}
{{- include "istiod.webhook" (merge (dict "prefix" "rev.object.") $core) }}
  namespaceSelector:
    matchExpressions:
      - key: istio.io/rev
        operator: DoesNotExist
      - key: istio-injection
        operator: DoesNotExist
  objectSelector:
    matchExpressions:
      - key: sidecar.istio.io/inject
        operator: NotIn
        values: ["false"]
      - key: istio.io/rev
        operator: In
        values: [{{ .selects | quote }}]
{{- if .legacy }}
{{- /* The legacy namespace label istio-injection=enabled. */}}
{{- include "istiod.webhook" (merge (dict "prefix" "namespace.") $core) }}
  namespaceSelector:
    matchExpressions:
      - key: istio-injection
        operator: In
        values: ["enabled"]
  objectSelector:
    matchExpressions:
      - key: sidecar.istio.io/inject
        operator: NotIn
        values: ["false"]
{{- /* An unlabelled namespace, a pod asking with sidecar.istio.io/inject=true. */}}
{{- include "istiod.webhook" (merge (dict "prefix" "object.") $core) }}
  namespaceSelector:
    matchExpressions:
      - key: istio-injection
        operator: DoesNotExist
      - key: istio.io/rev
        operator: DoesNotExist
  objectSelector:
    matchExpressions:
      - key: sidecar.istio.io/inject
        operator: In
        values: ["true"]
      - key: istio.io/rev
        operator: DoesNotExist
{{- if .root.Values.sidecarInjectorWebhook.enableNamespacesByDefault }}
{{- /* enableNamespacesByDefault: unlabelled namespaces and pods (system namespaces excepted). */}}
{{- include "istiod.webhook" (merge (dict "prefix" "auto.") $core) }}
  namespaceSelector:
    matchExpressions:
      - key: istio-injection
        operator: DoesNotExist
      - key: istio.io/rev
        operator: DoesNotExist
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"]
  objectSelector:
    matchExpressions:
      - key: sidecar.istio.io/inject
        operator: DoesNotExist
      - key: istio.io/rev
        operator: DoesNotExist
{{- end }}
{{- end }}
{{- end }}

{{/* One webhook without its selectors. Argument: a dict with prefix, service, namespace, reinvocationPolicy. */}}
{{- define "istiod.webhook" }}
- name: {{ .prefix }}sidecar-injector.istio.io
  clientConfig:
    service:
      name: {{ .service }}
      namespace: {{ .namespace }}
      path: /inject
      port: 443
  rules:
    - operations: ["CREATE"]
      apiGroups: [""]
      apiVersions: ["v1"]
      resources: ["pods"]
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: ["v1"]
  reinvocationPolicy: {{ .reinvocationPolicy }}
  timeoutSeconds: 10
{{- end }}
