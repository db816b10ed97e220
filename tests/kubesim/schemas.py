"""Known fields per kind, for the API server's unknown-field handling (`fieldValidation`).

The real server decodes into typed structs: unknown fields are dropped, reported as a warning
(`Warn`, the default), or rejected with 400 (`Strict`, what kubectl sends). A schema here is a
nested dict of known field names; `ANY` marks a subtree that is not checked (free-form maps, or
structures kubesim does not model field by field). Lists of objects use the item's schema. A custom
resource's schema may also hold `Fields`: an object whose keys beyond its listed ones are all known too,
each value checked by one schema (a CRD's `additionalProperties`, or `x-kubernetes-preserve-unknown-fields`
beside `properties`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Schema = Mapping[str, Any]
ANY: Schema = {"*": None}


@dataclass(frozen=True)
class Fields(Mapping[str, Any]):
    """A schema whose every key is known: a listed one's value is checked by its own schema (`listed`), any
    other's by `rest` (`ANY`: kept as it is). Iterating it gives the listed keys only."""

    listed: Mapping[str, Schema]
    rest: Schema

    def __getitem__(self, key: str) -> Schema:
        return self.listed.get(key, self.rest)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def __iter__(self) -> Iterator[str]:
        return iter(self.listed)

    def __len__(self) -> int:
        return len(self.listed)


def _fields(names: str, **nested: Schema) -> dict[str, Any]:
    schema: dict[str, Any] = dict.fromkeys(names.split(), ANY)
    schema.update(nested)
    return schema


METADATA = _fields(
    "name generateName namespace selfLink uid resourceVersion generation creationTimestamp deletionTimestamp "
    "deletionGracePeriodSeconds labels annotations ownerReferences finalizers managedFields"
)
PROBE = _fields(
    "exec httpGet tcpSocket grpc initialDelaySeconds timeoutSeconds periodSeconds successThreshold "
    "failureThreshold terminationGracePeriodSeconds"
)
CONTAINER = _fields(
    "args command env envFrom image imagePullPolicy lifecycle name ports resizePolicy resources restartPolicy "
    "securityContext stdin stdinOnce terminationMessagePath terminationMessagePolicy tty volumeDevices "
    "volumeMounts workingDir",
    livenessProbe=PROBE,
    readinessProbe=PROBE,
    startupProbe=PROBE,
    env=_fields("name value valueFrom"),
    ports=_fields("containerPort hostIP hostPort name protocol"),
    volumeMounts=_fields("mountPath mountPropagation name readOnly recursiveReadOnly subPath subPathExpr"),
)
POD_SPEC = _fields(
    "activeDeadlineSeconds affinity automountServiceAccountToken dnsConfig dnsPolicy enableServiceLinks "
    "ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname imagePullSecrets nodeName "
    "nodeSelector os overhead preemptionPolicy priority priorityClassName readinessGates resourceClaims resources "
    "restartPolicy runtimeClassName schedulerName schedulingGates securityContext serviceAccount "
    "serviceAccountName setHostnameAsFQDN shareProcessNamespace subdomain terminationGracePeriodSeconds "
    "tolerations topologySpreadConstraints volumes",
    containers=CONTAINER,
    initContainers=CONTAINER,
)
TEMPLATE = {"metadata": METADATA, "spec": POD_SPEC}
RBAC_RULE = _fields("apiGroups nonResourceURLs resourceNames resources verbs")
ROLE_REF = _fields("apiGroup kind name")
SUBJECT = _fields("apiGroup kind name namespace")
TOP = "apiVersion kind"

SCHEMAS: dict[str, Schema] = {
    "namespaces": _fields(TOP, metadata=METADATA, spec=_fields("finalizers"), status=ANY),
    "configmaps": _fields(f"{TOP} data binaryData immutable", metadata=METADATA),
    "secrets": _fields(f"{TOP} data stringData type immutable", metadata=METADATA),
    "serviceaccounts": _fields(f"{TOP} automountServiceAccountToken imagePullSecrets secrets", metadata=METADATA),
    "pods": _fields(TOP, metadata=METADATA, spec=POD_SPEC, status=ANY),
    "services": _fields(
        TOP,
        metadata=METADATA,
        status=ANY,
        spec=_fields(
            "allocateLoadBalancerNodePorts clusterIP clusterIPs externalIPs externalName externalTrafficPolicy "
            "healthCheckNodePort internalTrafficPolicy ipFamilies ipFamilyPolicy loadBalancerClass loadBalancerIP "
            "loadBalancerSourceRanges publishNotReadyAddresses selector sessionAffinity sessionAffinityConfig "
            "trafficDistribution type",
            ports=_fields("appProtocol name nodePort port protocol targetPort"),
        ),
    ),
    "deployments": _fields(
        TOP,
        metadata=METADATA,
        status=ANY,
        spec=_fields(
            "minReadySeconds paused progressDeadlineSeconds replicas revisionHistoryLimit selector strategy",
            template=TEMPLATE,
        ),
    ),
    "replicasets": _fields(
        TOP, metadata=METADATA, status=ANY, spec=_fields("minReadySeconds replicas selector", template=TEMPLATE)
    ),
    "statefulsets": _fields(
        TOP,
        metadata=METADATA,
        status=ANY,
        spec=_fields(
            "minReadySeconds ordinals persistentVolumeClaimRetentionPolicy podManagementPolicy replicas "
            "revisionHistoryLimit selector serviceName updateStrategy volumeClaimTemplates",
            template=TEMPLATE,
        ),
    ),
    "mutatingwebhookconfigurations": _fields(
        TOP,
        metadata=METADATA,
        webhooks=_fields(
            "admissionReviewVersions failurePolicy matchConditions matchPolicy name namespaceSelector objectSelector "
            "reinvocationPolicy sideEffects timeoutSeconds",
            clientConfig=_fields("caBundle url", service=_fields("name namespace path port")),
            rules=_fields("apiGroups apiVersions operations resources scope"),
        ),
    ),
    "validatingwebhookconfigurations": _fields(
        TOP,
        metadata=METADATA,
        webhooks=_fields(
            "admissionReviewVersions failurePolicy matchConditions matchPolicy name namespaceSelector objectSelector "
            "sideEffects timeoutSeconds",
            clientConfig=_fields("caBundle url", service=_fields("name namespace path port")),
            rules=_fields("apiGroups apiVersions operations resources scope"),
        ),
    ),
    "leases": _fields(
        TOP,
        metadata=METADATA,
        spec=_fields(
            "acquireTime holderIdentity leaseDurationSeconds leaseTransitions preferredHolder renewTime strategy"
        ),
    ),
    "clusterroles": _fields(TOP, metadata=METADATA, aggregationRule=ANY, rules=RBAC_RULE),
    "roles": _fields(TOP, metadata=METADATA, rules=RBAC_RULE),
    "clusterrolebindings": _fields(TOP, metadata=METADATA, roleRef=ROLE_REF, subjects=SUBJECT),
    "rolebindings": _fields(TOP, metadata=METADATA, roleRef=ROLE_REF, subjects=SUBJECT),
    "customresourcedefinitions": _fields(TOP, metadata=METADATA, spec=ANY, status=ANY),
    "poddisruptionbudgets": _fields(
        TOP,
        metadata=METADATA,
        status=ANY,
        spec=_fields("maxUnavailable minAvailable selector unhealthyPodEvictionPolicy"),
    ),
    "horizontalpodautoscalers": _fields(
        TOP,
        metadata=METADATA,
        status=ANY,
        spec=_fields(
            "behavior maxReplicas minReplicas",
            scaleTargetRef=_fields("apiVersion kind name"),
            metrics=_fields(
                "containerResource external object pods type",
                resource=_fields("name", target=_fields("averageUtilization averageValue type value")),
            ),
        ),
    ),
    "endpointslices": _fields(
        f"{TOP} addressType",
        metadata=METADATA,
        endpoints=_fields("addresses conditions deprecatedTopology hints hostname nodeName targetRef zone"),
        ports=_fields("appProtocol name port protocol"),
    ),
}


def prune_unknown(obj: Any, schema: Schema, path: str = "") -> list[str]:
    """Remove fields `schema` does not know from `obj` (in place); return their dotted paths."""
    if schema is ANY or schema.get("*", 0) is None:
        return []
    found: list[str] = []
    if isinstance(obj, list):
        for item in obj:
            found.extend(prune_unknown(item, schema, path))
        return found
    if not isinstance(obj, dict):
        return []
    for key in list(obj):
        field_path = f"{path}.{key}" if path else key
        if key not in schema:
            found.append(field_path)
            del obj[key]
            continue
        found.extend(prune_unknown(obj[key], schema[key], field_path))
    return found
