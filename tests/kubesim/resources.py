"""The resource types kubesim serves: discovery data, defaults, validation and patch schema.

Each `ResourceType` carries what the API server's registry knows about a resource: its group,
version, plural and kind; how its name is validated; which fields take defaults on create; which
lists merge by which key in a strategic merge patch; which fields a field selector may use; and
which fields are immutable on update. Adding a resource is one entry in `RESOURCES`.

Pod specs (of Pods and of workloads' templates) are validated in `tests.kubesim.podspec`, Services in
`tests.kubesim.servicespec`, the RBAC kinds (and defaulted) in `tests.kubesim.rbac`.

A Pod's defaults here also hold what the built-in Priority admission plugin adds (priority and preemption
policy): the real chain runs it once, before the mutating webhooks; here it runs with the defaults, so again on
the object a mutating webhook gives back. DefaultTolerationSeconds (`admit_default_toleration_seconds`) runs
where the real chain runs it, in the registry's admission step before the webhooks.

The quantities of every ResourceList a served kind's generated defaulters reach (a pod spec's containers,
claim templates, overhead and pod-level resources, a Pod's container statuses, a StatefulSet's volume claim
templates) are rounded up to milli scale as `SetDefaults_ResourceList` rounds them (`round_up_to_milli`), from
the text decoding left: a binary quantity that needed rounding may come back decimal where Go writes it binary.

Custom resources are not in `RESOURCES`: `tests.kubesim.customresources` builds their `ResourceType`s from
each stored CustomResourceDefinition (whose own entry is here).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tests.kubesim import canonical, rbac, weburl
from tests.kubesim.kl_env import parse_quantity
from tests.kubesim.podspec import validate_only_added_tolerations, validate_pod_only, validate_pod_spec
from tests.kubesim.schemas import ANY, SCHEMAS, Schema
from tests.kubesim.selectors import FieldGetter, SelectorError, selector_from_label_selector
from tests.kubesim.servicespec import default_service, validate_service, validate_service_update
from tests.kubesim.validation import (
    FieldErrors,
    GoSyntax,
    check_config_data,
    check_dns1035,
    check_endpoint_ip,
    check_fqdn,
    check_fully_qualified_name,
    check_label,
    check_port,
    dns1035_problems,
    go_lower,
    go_pointer,
    go_string,
    go_string_slice,
    go_struct,
    path_segment_problems,
    qualified_name_problems,
    subdomain_problems,
)

Obj = dict[str, Any]
Defaulter = Callable[[Obj], None]
Validator = Callable[[Obj, FieldErrors], None]
UpdateValidator = Callable[[Obj, Obj, FieldErrors], None]

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def _get(path: str) -> FieldGetter:
    parts = path.split(".")

    def getter(obj: Mapping[str, Any]) -> str:
        value: Any = obj
        for part in parts:
            value = value.get(part) if isinstance(value, Mapping) else None
        return "" if value is None else str(value)

    return getter


META_FIELDS: dict[str, FieldGetter] = {"metadata.name": _get("metadata.name")}
NAMESPACED_FIELDS: dict[str, FieldGetter] = {**META_FIELDS, "metadata.namespace": _get("metadata.namespace")}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    name_rule: str = "subdomain"  # subdomain | label | dns1035 | path_segment | rbac (`NAME_RULE_PROBLEMS`)
    # False for a kind whose own validation leaves its metadata alone (a PodDisruptionBudget's): the registry's
    # generic check (`BeforeCreate`, path-segment names) does it, on create after the kind's checks and only
    # when they found nothing
    strategy_checks_metadata: bool = True
    # what else a new object's name (or generateName) must be, reported after the rule's problems (a CRD's:
    # <plural>.<group>)
    name_problems: Callable[[Obj, str], list[str]] | None = None
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    merge_keys: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, FieldGetter] = field(default_factory=dict)
    defaults: Defaulter | None = None
    validate: Validator | None = None
    # what only a create checks, after `validate` (a CRD's stored versions, which an update checks after the
    # fields it may not change)
    validate_create: Validator | None = None
    # whether an update checks the metadata as a create does, its generateName too (`ValidateObjectMeta`, which
    # the RBAC kinds' update validation runs), rather than only what `ValidateObjectMetaUpdate` checks
    update_validates_object_meta: bool = False
    validate_update: UpdateValidator | None = None
    # what the kind's PrepareForUpdate does to (new, old) once the stored status is kept, before validation (a
    # CRD's storage version joins its stored versions)
    prepare_update: Callable[[Obj, Obj], None] | None = None
    # whether `validate_update`'s causes come before `validate`'s, as in `ValidateServiceUpdate`
    update_checks_first: bool = False
    # top-level fields whose change bumps metadata.generation; empty: the kind has no generation
    generation_fields: tuple[str, ...] = ()
    # fields only the status subresource may write: kept from the stored object on update
    status_subresource: bool = False
    # `<plural>/scale` (autoscaling/v1 Scale over spec.replicas), as for Deployments and ReplicaSets
    scale_subresource: bool = False
    initial_status: Callable[[Obj], Any] | None = None
    # what the kind's PrepareForCreate does to a new object besides its status (a Namespace's finalizer)
    prepare_create: Callable[[Obj], None] | None = None
    # what a write of the status subresource checks besides the metadata (a Namespace's phase)
    validate_status: UpdateValidator | None = None
    return_deleted_object: bool = False
    # whether the collection can be deleted in one request (the `deletecollection` verb); Namespaces cannot
    delete_collection: bool = True
    # a custom resource (served for a CRD): no strategic merge patch, unknown fields per `schema`
    custom: bool = False
    schema: Schema | None = None  # None: `tests.kubesim.schemas.SCHEMAS[plural]`
    # a CRD's accepted `listKind`, the kind of its lists; empty: the kind and "List", as for every built-in kind
    custom_list_kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.custom_list_kind or f"{self.kind}List"

    def field_getters(self) -> Mapping[str, FieldGetter]:
        base = NAMESPACED_FIELDS if self.namespaced else META_FIELDS
        return {**base, **self.fields}

    def discovery(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": [v for v in VERBS if v != "deletecollection" or self.delete_collection],
        }
        if self.short_names:
            doc["shortNames"] = list(self.short_names)
        if self.categories:
            doc["categories"] = list(self.categories)
        return doc

    def subresource_discovery(self) -> list[dict[str, Any]]:
        """The discovery entries of this resource's `status` and `scale` subresources (kubectl scale needs one), and
        a Namespace's `finalize` (update only: `FinalizeREST` is no getter)."""
        entries: list[dict[str, Any]] = []
        verbs = ["get", "patch", "update"]
        if self.key == "namespaces":
            finalize = {"name": "namespaces/finalize", "singularName": "", "namespaced": False, "kind": self.kind}
            entries.append({**finalize, "verbs": ["update"]})
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": verbs,
                }
            )
        if self.scale_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": verbs,
                }
            )
        return entries


# -- merge keys (strategic merge patch) ----------------------------------------------------------

META_MERGE = {"metadata.ownerReferences": "uid", "metadata.finalizers": ""}


def pod_spec_merge(prefix: str) -> dict[str, str]:
    keys = {
        f"{prefix}volumes": "name",
        f"{prefix}imagePullSecrets": "name",
        f"{prefix}hostAliases": "ip",
        f"{prefix}topologySpreadConstraints": "topologyKey",
        f"{prefix}resourceClaims": "name",
        f"{prefix}schedulingGates": "name",
    }
    for containers in ("containers", "initContainers", "ephemeralContainers"):
        base = f"{prefix}{containers}"
        keys[base] = "name"
        keys[f"{base}.env"] = "name"
        keys[f"{base}.ports"] = "containerPort"
        keys[f"{base}.volumeMounts"] = "mountPath"
        keys[f"{base}.volumeDevices"] = "devicePath"
    return keys


CONDITIONS = {"status.conditions": "type"}

# -- defaults ------------------------------------------------------------------------------------


_MILLI = -3  # the scale `SetDefaults_ResourceList` rounds up to
# the text of a quantity that parses, as decoding leaves it (`tests.kubesim.canonical`)
_QUANTITY_TEXT = re.compile(r"[+-]?[0-9]*(?:\.[0-9]*)?(?:[numkMGTPE]|[KMGTPE]i|[eE][-+]?[0-9]+)?")


def round_up_to_milli(quantity: Any) -> Any:
    """One quantity of a ResourceList as `SetDefaults_ResourceList` leaves it (pkg/apis/core/v1/defaults.go):
    `RoundUp(-3)`, so a value finer than a thousandth is rounded up, away from zero, to the next thousandth
    (`0.0001` is `1m`, `1.0001` is `1001m`, `-0.0001` is `-1m`) and written again as `Quantity.String()`
    writes it, in the format its text gives (`1e-4` is `1e-3`). A value whole to the thousandth keeps its text.
    `quantity` is the text decoding left (`tests.kubesim.canonical`), which is canonical already unless it was
    kept as sent, so a binary value (`Ki`..`Ei`) that needed rounding reaches this as decimal text: one whose
    rounding makes it a whole number of at least 1024 is written as a decimal number (`2048`) where Go, which
    rounds the value as parsed, writes it binary (`2Ki`). Anything else is left as it is."""
    if not isinstance(quantity, str) or not quantity or not _QUANTITY_TEXT.fullmatch(quantity):
        return quantity
    try:
        unscaled, scale, form, _ = canonical.parse_quantity(quantity)
    except ValueError:
        return quantity
    if scale >= _MILLI or unscaled == 0:
        return quantity
    whole, rest = divmod(abs(unscaled), 10 ** (_MILLI - scale))
    rounded = (whole + (rest > 0)) * (1 if unscaled > 0 else -1)
    return canonical.canonicalize(rounded, _MILLI, form)


def _objects(value: Any) -> list[Obj]:
    """The objects of a list (none of anything else)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _round_resource_list(holder: Any, key: str) -> None:
    """`SetDefaults_ResourceList` of `holder[key]`: each quantity rounded up to milli (`round_up_to_milli`)."""
    listed = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(listed, dict):
        for name, quantity in listed.items():
            listed[name] = round_up_to_milli(quantity)


def _round_requirements(holder: Any) -> None:
    """The `limits` then the `requests` of `holder.resources` (a container's, a claim spec's), rounded."""
    resources = holder.get("resources") if isinstance(holder, dict) else None
    _round_resource_list(resources, "limits")
    _round_resource_list(resources, "requests")


def round_pod_spec_resource_lists(spec: Obj) -> None:
    """Every ResourceList of a pod spec the generated defaulters reach (`SetObjectDefaults_Pod`, and the same
    walk of a workload's template: zz_generated.defaults.go), in their order: an ephemeral volume's claim
    template's limits and requests, each init container's, container's and ephemeral container's limits and
    requests, the `overhead`, and the pod-level `resources` (a 1.32 field, behind the PodLevelResources gate)."""
    for volume in _objects(spec.get("volumes")):
        ephemeral = volume.get("ephemeral")
        claim = ephemeral.get("volumeClaimTemplate") if isinstance(ephemeral, dict) else None
        _round_requirements(claim.get("spec") if isinstance(claim, dict) else None)
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in _objects(spec.get(key)):
            _round_requirements(container)
    _round_resource_list(spec, "overhead")
    _round_requirements(spec)


def _round_pod_status_resource_lists(status: Any) -> None:
    """A Pod's status's ResourceLists (`SetObjectDefaults_Pod`): each init container's, container's and ephemeral
    container's `allocatedResources`, then its `resources` limits and requests."""
    if not isinstance(status, dict):
        return
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in _objects(status.get(key)):
            _round_resource_list(container, "allocatedResources")
            _round_requirements(container)


def _default_container(container: Obj) -> None:
    image = str(container.get("image", ""))
    tail = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in container:
        untagged = ":" not in tail and "@" not in image
        container["imagePullPolicy"] = "Always" if untagged or tail.endswith(":latest") else "IfNotPresent"
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if isinstance(probe, dict):
            _default_probe(probe)
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict) and not field_ref.get("apiVersion"):
            field_ref["apiVersion"] = "v1"  # SetDefaults_ObjectFieldSelector


def _default_unset(obj: Obj, key: str, value: Any) -> None:
    """Set `key` when it is missing, null or Go's zero value (0, ""): Go defaulting cannot tell an
    explicit zero from an absent field, so `timeoutSeconds: 0` or `dnsPolicy: ""` get the default too."""
    if obj.get(key) in (None, 0, "") and not isinstance(obj.get(key), bool):
        obj[key] = value


def _default_probe(probe: Obj) -> None:
    """SetDefaults_Probe and SetDefaults_HTTPGetAction: zero counts and empty strings take the defaults."""
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)):
        _default_unset(probe, key, value)
    if isinstance(probe.get("httpGet"), dict):
        _default_unset(probe["httpGet"], "path", "/")
        _default_unset(probe["httpGet"], "scheme", "HTTP")


def _force_default_proc_mount(spec: Obj) -> None:
    """A 1.32 server runs with the ProcMountType gate off (beta, off by default until 1.33): the registry
    forces any container's `procMount` to `Default` before validation (`dropDisabledProcMountField`),
    so no value is refused and `Unmasked` is not kept."""
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            context = container.get("securityContext") if isinstance(container, dict) else None
            if isinstance(context, dict) and context.get("procMount") is not None:
                context["procMount"] = "Default"


def _drop_disabled_fields(spec: Obj) -> None:
    """What `dropDisabledFields` takes out of a pod spec or template on a 1.32 server, whose alpha gates are off
    (and what it took out of the stored object, so never in use there): each container's `resizePolicy`
    (InPlacePodVerticalScaling, beta in 1.33) and the pod-level `resources` (PodLevelResources, new in 1.32)."""
    spec.pop("resources", None)
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                container.pop("resizePolicy", None)


def default_pod_spec(spec: Obj) -> None:
    """What a Pod's spec and a workload template's take alike (`SetDefaults_PodSpec` and the container, probe,
    volume and ResourceList defaulters); what only a Pod takes (`SetDefaults_Pod`) is in `_default_pod`."""
    _default_unset(spec, "restartPolicy", "Always")
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    _default_unset(spec, "dnsPolicy", "ClusterFirst")
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    _default_unset(spec, "schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                _default_container(container)
    _force_default_proc_mount(spec)
    _drop_disabled_fields(spec)
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source, mode_field in (
            ("configMap", "defaultMode"),
            ("secret", "defaultMode"),
            ("projected", "defaultMode"),
        ):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault(mode_field, 420)
        if isinstance(volume.get("downwardAPI"), dict):
            volume["downwardAPI"].setdefault("defaultMode", 420)
    round_pod_spec_resource_lists(spec)


_QOS_RESOURCES = frozenset({"cpu", "memory"})


def _qos_amounts(resources: Mapping[str, Any], section: str) -> dict[str, Fraction]:
    """The cpu and memory of a container's `requests` or `limits` that count for its QoS: those above zero."""
    listed = resources.get(section)
    amounts: dict[str, Fraction] = {}
    for name, quantity in listed.items() if isinstance(listed, Mapping) else ():
        try:
            amount = parse_quantity(quantity)
        except ValueError:
            continue
        if name in _QOS_RESOURCES and amount > 0:
            amounts[name] = amount
    return amounts


def qos_class(spec: Mapping[str, Any]) -> str:
    """A new Pod's `status.qosClass` as the Pod strategy's PrepareForCreate sets it (`ComputePodQOS`; pod-level
    resources are behind the PodLevelResources gate, off in 1.32), so after defaulting: requests a limit gave
    count. Only cpu and memory above zero count, summed over the containers and init containers. None at all:
    BestEffort. Guaranteed: every container has a cpu and a memory limit, and the summed requests equal the
    summed limits for both resources. Anything else: Burstable."""
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        given = container.get("resources") if isinstance(container, Mapping) else None
        resources: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        for name, amount in _qos_amounts(resources, "requests").items():
            requests[name] = requests.get(name, Fraction(0)) + amount
        container_limits = _qos_amounts(resources, "limits")
        for name, amount in container_limits.items():
            limits[name] = limits.get(name, Fraction(0)) + amount
        if set(container_limits) != _QOS_RESOURCES:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests.keys() == limits.keys() and all(limits[n] == a for n, a in requests.items()):
        return "Guaranteed"
    return "Burstable"


def _default_host_network_ports(spec: Obj) -> None:
    """With `hostNetwork`, a pod's container ports without a host port get their container port as one
    (SetDefaults_Pod; templates are left alone, so their validation allows 0)."""
    if spec.get("hostNetwork") is not True:
        return
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            for port in (container.get("ports") or []) if isinstance(container, dict) else []:
                if isinstance(port, dict) and not port.get("hostPort") and port.get("containerPort"):
                    port["hostPort"] = port["containerPort"]


def _default_requests_from_limits(spec: Obj) -> None:
    """A resource a container or init container limits but does not request is requested at its limit
    (`SetDefaults_Pod`: a Pod's, not a template's, so a workload keeps what it was given; ephemeral
    containers have no resources). Pod-level resources and their defaults are behind the PodLevelResources
    gate, off in 1.32. `SetObjectDefaults_Pod` runs this before the ResourceList defaulters, so a request
    copied from a limit is then rounded up to milli as the limit is (`round_pod_spec_resource_lists`)."""
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            resources = container.get("resources") if isinstance(container, dict) else None
            limits = resources.get("limits") if isinstance(resources, dict) else None
            if not isinstance(resources, dict) or not isinstance(limits, dict) or not limits:
                continue
            requests = resources.get("requests")
            if not isinstance(requests, dict):
                requests = resources["requests"] = {}
            for name, quantity in limits.items():
                requests.setdefault(name, quantity)


NODE_NOT_READY_TAINT = "node.kubernetes.io/not-ready"
NODE_UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
DEFAULT_TOLERATION_SECONDS = 300  # --default-not-ready-toleration-seconds, --default-unreachable-toleration-seconds


def admit_default_toleration_seconds(pod: Obj) -> None:
    """The DefaultTolerationSeconds admission plugin (on by default), on a Pod's create and update but no
    subresource's: unless the pod already tolerates the taint, a NoExecute toleration of
    `node.kubernetes.io/not-ready`, then one of `node.kubernetes.io/unreachable`, each with operator Exists
    and 300 seconds, is appended to its tolerations. A toleration counts when its key is the taint's or
    empty and its effect is NoExecute or empty, whatever its operator, value or seconds (so `operator:
    Exists` alone, which tolerates everything, leaves the list as it is). The real chain runs it after the
    ServiceAccount and Priority plugins and before the mutating webhooks, which may remove what it added."""
    spec = pod.get("spec")
    tolerations = spec.get("tolerations") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(tolerations, (list, type(None))):
        return
    current = [t for t in tolerations or [] if isinstance(t, dict)]

    def tolerated(taint: str) -> bool:
        return any(
            (t.get("key") or "") in (taint, "") and (t.get("effect") or "") in ("NoExecute", "") for t in current
        )

    added = [
        {"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}
        for taint in (NODE_NOT_READY_TAINT, NODE_UNREACHABLE_TAINT)
        if not tolerated(taint)
    ]
    if added:
        spec["tolerations"] = [*(tolerations or []), *added]


def _default_pod(obj: Obj) -> None:
    """A Pod's defaults (`SetDefaults_Pod`, `SetDefaults_PodSpec` and what they call), then what the built-in
    Priority admission plugin adds: priority and preemption policy (see the module's docstring)."""
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        _default_requests_from_limits(spec)
        spec.setdefault("enableServiceLinks", True)  # `SetDefaults_Pod`: a template keeps it unset
        default_pod_spec(spec)
        _default_host_network_ports(spec)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    _round_pod_status_resource_lists(obj.get("status"))


def _pod_status(obj: Obj) -> Obj:
    return {"phase": "Pending", "qosClass": qos_class(obj.get("spec") or {})}


def _default_template(obj: Obj) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        if isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])


def _default_deployment(obj: Obj) -> None:
    """apps/v1 defaults: strategy RollingUpdate with 25%/25% (each filled in alone), history 10, deadline 600 s."""
    _default_template(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        strategy = spec.get("strategy")
        if not isinstance(strategy, dict):
            strategy = spec["strategy"] = {}
        if not strategy.get("type"):
            strategy["type"] = "RollingUpdate"
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.get("rollingUpdate")
            if not isinstance(rolling, dict):
                rolling = strategy["rollingUpdate"] = {}
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)


def _default_statefulset(obj: Obj) -> None:
    """apps/v1 defaults: OrderedReady, RollingUpdate with partition 0, history 10, PVC retention Retain."""
    _default_template(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.get("updateStrategy")
    if not isinstance(strategy, dict):
        strategy = spec["updateStrategy"] = {}
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.get("rollingUpdate")
        if not isinstance(rolling, dict):
            rolling = strategy["rollingUpdate"] = {}
        rolling.setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    for claim in _objects(spec.get("volumeClaimTemplates")):
        _round_requirements(claim.get("spec"))  # `SetObjectDefaults_StatefulSet`: each claim's ResourceLists
        _round_resource_list(claim.get("status"), "capacity")
        _round_resource_list(claim.get("status"), "allocatedResources")


def _default_namespace(obj: Obj) -> None:
    meta = obj["metadata"]
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        labels = {}
    labels["kubernetes.io/metadata.name"] = meta["name"]
    meta["labels"] = labels


NAMESPACE_FINALIZER = "kubernetes"  # the namespace controller's, in spec.finalizers
STANDARD_FINALIZERS = (NAMESPACE_FINALIZER, "orphan", "foregroundDeletion")


def _prepare_namespace(obj: Obj) -> None:
    """`namespaceStrategy.PrepareForCreate`: the `kubernetes` finalizer added to the spec's own, if missing."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    finalizers = list(spec.get("finalizers") or [])
    if NAMESPACE_FINALIZER not in finalizers:
        finalizers.append(NAMESPACE_FINALIZER)
    spec["finalizers"] = finalizers


def _validate_namespace(obj: Obj, errors: FieldErrors) -> None:
    """The spec's finalizers (`ValidateNamespace`, `ValidateNamespaceFinalizeUpdate`): each a qualified name
    (`ValidateFinalizerName`), and one without a '/' a standard one (`validateKubeFinalizerName`)."""
    for i, finalizer in enumerate((obj.get("spec") or {}).get("finalizers") or []):
        name = str(finalizer)
        for problem in qualified_name_problems(name):
            errors.invalid(f"spec.finalizers[{i}]", name, problem)
        if "/" not in name and name not in STANDARD_FINALIZERS:
            errors.invalid(
                f"spec.finalizers[{i}]", name, "name is neither a standard finalizer name nor is it fully qualified"
            )


def _validate_namespace_status(obj: Obj, old: Obj, errors: FieldErrors) -> None:
    """`ValidateNamespaceStatusUpdate`: the phase must say whether the namespace is being deleted."""
    phase = (obj.get("status") or {}).get("phase") or ""
    if not obj["metadata"].get("deletionTimestamp"):
        if phase != "Active":
            errors.invalid("status.Phase", phase, "may only be 'Active' if `deletionTimestamp` is empty")
    elif phase != "Terminating":
        errors.invalid("status.Phase", phase, "may only be 'Terminating' if `deletionTimestamp` is not empty")


def _default_secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        existing = obj.get("data")
        data: dict[str, Any] = existing if isinstance(existing, dict) else {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _default_validating_webhooks(obj: Obj) -> None:
    """admissionregistration/v1 defaults of a ValidatingWebhookConfiguration's webhooks."""
    for hook in obj.get("webhooks") or []:
        if not isinstance(hook, dict):
            continue
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", 10)
        for rule in hook.get("rules") or []:
            if isinstance(rule, dict):
                rule.setdefault("scope", "*")
        service = (hook.get("clientConfig") or {}).get("service")
        if isinstance(service, dict):
            service.setdefault("port", 443)


# A validating webhook has every field of a mutating one except `reinvocationPolicy`.
_MUTATING_SCHEMA = SCHEMAS["mutatingwebhookconfigurations"]
VALIDATING_WEBHOOKS_SCHEMA: Schema = {
    **_MUTATING_SCHEMA,
    "webhooks": {k: v for k, v in _MUTATING_SCHEMA["webhooks"].items() if k != "reinvocationPolicy"},
}


# Known fields of the RBAC kinds and of Leases (for unknown-field handling and apply).
_BASE_SCHEMA: Schema = {"apiVersion": ANY, "kind": ANY, "metadata": SCHEMAS["configmaps"]["metadata"]}
_RBAC_RULE: Schema = dict.fromkeys(("apiGroups", "nonResourceURLs", "resourceNames", "resources", "verbs"), ANY)
ROLE_SCHEMA: Schema = {**_BASE_SCHEMA, "rules": _RBAC_RULE}
CLUSTER_ROLE_SCHEMA: Schema = {**ROLE_SCHEMA, "aggregationRule": ANY}
ROLE_BINDING_SCHEMA: Schema = {
    **_BASE_SCHEMA,
    "roleRef": dict.fromkeys(("apiGroup", "kind", "name"), ANY),
    "subjects": dict.fromkeys(("apiGroup", "kind", "name", "namespace"), ANY),
}
LEASE_SCHEMA: Schema = {**_BASE_SCHEMA, "spec": ANY}


def _default_mutating_webhooks(obj: Obj) -> None:
    """The validating defaults plus `reinvocationPolicy: Never` (a field only mutating webhooks have)."""
    _default_validating_webhooks(obj)
    for hook in obj.get("webhooks") or []:
        if isinstance(hook, dict):
            hook.setdefault("reinvocationPolicy", "Never")


def _default_endpointslice(obj: Obj) -> None:
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


# -- validation ----------------------------------------------------------------------------------


def _validate_pod(obj: Obj, errors: FieldErrors) -> None:
    validate_pod_spec(obj.get("spec"), "spec", errors, resource_is_pod=True)
    validate_pod_only(obj.get("spec"), "spec", errors)


def _validate_pod_create(obj: Obj, errors: FieldErrors) -> None:
    """What only a new pod is refused for (`ValidatePodCreate`): ephemeral containers, which only the
    `ephemeralcontainers` subresource adds to a running pod, and a node while scheduling gates remain."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("ephemeralContainers"):
        errors.forbidden("spec.ephemeralContainers", "cannot be set on create")
    if spec.get("nodeName") and spec.get("schedulingGates"):
        errors.forbidden("spec.nodeName", "cannot be set until all schedulingGates have been cleared")


_POD_MUTABLE_NOTE = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def _pod_spec_without_mutable(spec: Mapping[str, Any]) -> Obj:
    clean = copy.deepcopy(dict(spec))
    for key in ("containers", "initContainers"):
        for container in clean.get(key) or []:
            if isinstance(container, dict):
                container.pop("image", None)
    clean.pop("activeDeadlineSeconds", None)
    clean.pop("tolerations", None)
    return clean


def _validate_pod_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """What `ValidatePodUpdate` checks besides the spec's own validation: the tolerations (only additions, and
    changes of `tolerationSeconds`: `validateOnlyAddedTolerations`), then that nothing else but the images,
    the active deadline and the tolerations changed."""
    new_spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    validate_only_added_tolerations(
        new_spec.get("tolerations"), old_spec.get("tolerations"), "spec.tolerations", errors
    )
    if _pod_spec_without_mutable(new_spec) != _pod_spec_without_mutable(old_spec):
        errors.forbidden("spec", _POD_MUTABLE_NOTE)


def _validate_workload(obj: Obj, errors: FieldErrors) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errors.required("spec")
        return
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        errors.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
    selector_spec = spec.get("selector")
    template = spec.get("template")
    if not isinstance(selector_spec, dict):
        errors.required("spec.selector")
    elif not selector_spec.get("matchLabels") and not selector_spec.get("matchExpressions"):
        errors.invalid("spec.selector", selector_spec, f"empty selector is invalid for {obj['kind'].lower()}")
    if not isinstance(template, dict):
        errors.required("spec.template")
        return
    labels = (template.get("metadata") or {}).get("labels") or {}
    if isinstance(selector_spec, dict):
        try:
            selector = selector_from_label_selector(selector_spec)
        except SelectorError as exc:
            errors.invalid("spec.selector", selector_spec, str(exc))
        else:
            if not selector.empty and not selector.matches(labels):
                errors.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
    tspec = template.get("spec")
    validate_pod_spec(tspec, "spec.template.spec", errors)
    if isinstance(tspec, dict) and tspec.get("restartPolicy", "Always") != "Always":
        errors.not_supported("spec.template.spec.restartPolicy", tspec.get("restartPolicy"), ["Always"])


_PERCENT = re.compile(r"^[0-9]+%$")


def _int_or_percent(errors: FieldErrors, path: str, value: Any) -> int | None:
    """The percentage or count of an IntOrString field (None: not a valid one; the error is recorded)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            errors.invalid(path, value, "must be greater than or equal to 0")
            return None
        return value
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return int(value[:-1])
    errors.invalid(
        path,
        value,
        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', "
        "regex used for validation is '[0-9]+%')",
    )
    return None


def _validate_deployment(obj: Obj, errors: FieldErrors) -> None:
    _validate_workload(obj, errors)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    strategy = spec.get("strategy") or {}
    stype = strategy.get("type")
    rolling = strategy.get("rollingUpdate")
    if stype not in ("Recreate", "RollingUpdate"):
        errors.not_supported("spec.strategy.type", stype, ["Recreate", "RollingUpdate"])
    elif stype == "Recreate" and rolling is not None:
        errors.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
    elif isinstance(rolling, dict):
        path = "spec.strategy.rollingUpdate"
        surge = _int_or_percent(errors, f"{path}.maxSurge", rolling.get("maxSurge"))
        unavailable = _int_or_percent(errors, f"{path}.maxUnavailable", rolling.get("maxUnavailable"))
        if isinstance(rolling.get("maxUnavailable"), str) and (unavailable or 0) > 100:
            errors.invalid(f"{path}.maxUnavailable", rolling["maxUnavailable"], "must not be greater than 100%")
        if surge == 0 and unavailable == 0:
            errors.invalid(f"{path}.maxUnavailable", rolling.get("maxUnavailable"), "may not be 0 when `maxSurge` is 0")
    for name in ("revisionHistoryLimit", "minReadySeconds"):
        value = spec.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            errors.invalid(f"spec.{name}", value, "must be greater than or equal to 0")
    deadline = spec.get("progressDeadlineSeconds")
    min_ready = spec.get("minReadySeconds", 0)
    if isinstance(deadline, int) and isinstance(min_ready, int) and deadline <= min_ready:
        errors.invalid("spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds")


def _validate_statefulset(obj: Obj, errors: FieldErrors) -> None:
    _validate_workload(obj, errors)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    policy = spec.get("podManagementPolicy")
    if policy not in ("OrderedReady", "Parallel"):
        errors.not_supported("spec.podManagementPolicy", policy, ["OrderedReady", "Parallel"])
    strategy = spec.get("updateStrategy") or {}
    stype = strategy.get("type")
    if stype not in ("OnDelete", "RollingUpdate"):
        errors.not_supported("spec.updateStrategy.type", stype, ["OnDelete", "RollingUpdate"])
    elif stype == "OnDelete" and strategy.get("rollingUpdate") is not None:
        detail = "only allowed for updateStrategy 'RollingUpdate'"
        errors.invalid("spec.updateStrategy.rollingUpdate", strategy["rollingUpdate"], detail)
    partition = (strategy.get("rollingUpdate") or {}).get("partition", 0)
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        errors.invalid("spec.updateStrategy.rollingUpdate.partition", partition, "must be greater than or equal to 0")
    for name in ("revisionHistoryLimit", "minReadySeconds"):
        value = spec.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            errors.invalid(f"spec.{name}", value, "must be greater than or equal to 0")


_STATEFULSET_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)


def _validate_statefulset_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """Only the fields upstream lets change; the rest of the spec is fixed at create."""
    fixed_new = {k: v for k, v in (new.get("spec") or {}).items() if k not in _STATEFULSET_MUTABLE}
    fixed_old = {k: v for k, v in (old.get("spec") or {}).items() if k not in _STATEFULSET_MUTABLE}
    if fixed_new != fixed_old:
        errors.forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', "
            "'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        )


def _validate_workload_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    if (new.get("spec") or {}).get("selector") != (old.get("spec") or {}).get("selector"):
        errors.invalid("spec.selector", (new.get("spec") or {}).get("selector"), "field is immutable")


def _validate_configmap(obj: Obj, errors: FieldErrors) -> None:
    check_config_data(errors, obj, base64_values=False)


def _validate_secret(obj: Obj, errors: FieldErrors) -> None:
    check_config_data(errors, obj, base64_values=True)


def _validate_immutable_data(new: Obj, old: Obj, errors: FieldErrors) -> None:
    if old.get("immutable") is True:
        for section in ("data", "binaryData"):
            if new.get(section) != old.get(section):
                errors.forbidden(section, "field is immutable when `immutable` is set")
        if new.get("immutable") is not True:
            errors.forbidden("immutable", "field is immutable when `immutable` is set")


_OPERATIONS = ["*", "CONNECT", "CREATE", "DELETE", "UPDATE"]


def _validate_rule_resources(errors: FieldErrors, path: str, resources: Sequence[Any]) -> None:
    """admissionregistration's resource-list rules: wildcards and subresources that may not be mixed."""
    double = single = plain = False
    wild_sub: set[str] = set()
    wild_res: set[str] = set()
    for i, entry in enumerate(resources):
        if not isinstance(entry, str) or not entry:
            errors.required(f"{path}[{i}]")
            continue
        double = double or entry == "*/*"
        single = single or entry == "*"
        res, slash, sub = entry.partition("/")
        if not slash:
            plain = plain or entry != "*"
            continue
        if res in wild_sub:
            errors.invalid(f"{path}[{i}]", entry, f"if '{res}/*' is present, must not specify {entry}")
        if sub in wild_res:
            errors.invalid(f"{path}[{i}]", entry, f"if '*/{sub}' is present, must not specify {entry}")
        if sub == "*":
            wild_sub.add(res)
        if res == "*":
            wild_res.add(sub)
    if len(resources) > 1 and double:
        errors.invalid(path, go_string_slice(list(resources)), "if '*/*' is present, must not specify other resources")
    if single and plain:
        detail = "if '*' is present, must not specify other resources without subresources"
        errors.invalid(path, go_string_slice(list(resources)), detail)


def _validate_webhook_rules(errors: FieldErrors, path: str, rules: Any) -> None:
    """Each rule in the order of `validateRuleWithOperations`: its operations, then the rule's API groups, API
    versions, resources and scope. A list given as the bad value prints as Go's `%#v` of it."""
    if not isinstance(rules, list):
        errors.invalid(path, rules, "must be a list of rules")
        return
    for i, rule in enumerate(rules):
        rpath = f"{path}[{i}]"
        if not isinstance(rule, dict):
            errors.invalid(rpath, rule, "must be an object")
            continue
        operations = rule.get("operations") or []
        if not operations:
            errors.required(f"{rpath}.operations")
        if len(operations) > 1 and "*" in operations:
            shown = go_string_slice(operations, "admissionregistration.OperationType")
            errors.invalid(f"{rpath}.operations", shown, "if '*' is present, must not specify other operations")
        for j, op in enumerate(operations):
            if op not in _OPERATIONS:
                errors.not_supported(f"{rpath}.operations[{j}]", op, _OPERATIONS)
        for key, what in (("apiGroups", "API groups"), ("apiVersions", "API versions")):
            values = rule.get(key) or []
            if not values:
                errors.required(f"{rpath}.{key}")
            if len(values) > 1 and "*" in values:
                errors.invalid(
                    f"{rpath}.{key}", go_string_slice(values), f"if '*' is present, must not specify other {what}"
                )
        for j, version in enumerate(rule.get("apiVersions") or []):
            if not version:
                errors.required(f"{rpath}.apiVersions[{j}]")
        resources = rule.get("resources") or []
        if not resources:
            errors.required(f"{rpath}.resources")
        _validate_rule_resources(errors, f"{rpath}.resources", resources)
        scope = rule.get("scope", "*")
        if scope not in ("*", "Cluster", "Namespaced"):
            errors.not_supported(f"{rpath}.scope", scope, ["*", "Cluster", "Namespaced"])


def _validate_admission_review_versions(errors: FieldErrors, path: str, versions: Any) -> None:
    """A webhook's admissionReviewVersions (`validateAdmissionReviewVersions`): at least one; each a DNS-1035
    label, a repeat reported once as a duplicate instead; and one of them a version the server speaks."""
    if not versions:
        errors.required(path, "must specify one of v1, v1beta1")
        return
    seen: set[str] = set()
    for i, version in enumerate(versions):
        text = str(version)
        if text in seen:
            errors.invalid(f"{path}[{i}]", text, "duplicate version")
            continue
        seen.add(text)
        check_dns1035(errors, f"{path}[{i}]", text)
    if not seen & {"v1", "v1beta1"}:
        errors.invalid(path, go_string_slice(versions), "must include at least one of v1, v1beta1")


_URL_FORM = "; desired format: https://host[/path]"


def _validate_client_config(errors: FieldErrors, path: str, client: Mapping[str, Any]) -> None:
    """A webhook's clientConfig: exactly one of url and service, and only that one checked
    (`ValidateWebhookURL`: https, a host, no user information, fragment or query; `ValidateWebhookService`:
    name, namespace, port, then each segment of the path a DNS-1123 subdomain)."""
    url, service = client.get("url"), client.get("service")
    if (url is None) == (service is None):
        errors.required(path, "exactly one of url or service is required")
    elif url is not None:
        _validate_webhook_url(errors, f"{path}.url", str(url))
    elif isinstance(service, dict):
        _validate_webhook_service(errors, f"{path}.service", service)


def _validate_webhook_url(errors: FieldErrors, path: str, url: str) -> None:
    """`ValidateWebhookURL`: the URL as Go's `url.Parse` reads it (`tests.kubesim.weburl`); one it cannot parse
    is a single Required error quoting the parser."""
    try:
        parsed = weburl.parse(url)
    except weburl.URLError as exc:
        errors.required(path, f"url must be a valid URL: {exc}{_URL_FORM}")
        return
    if parsed.scheme != "https":
        errors.invalid(path, parsed.scheme, "'https' is the only allowed URL scheme" + _URL_FORM)
    if not parsed.host:
        errors.invalid(path, "", "host must be specified" + _URL_FORM)
    if parsed.user is not None:
        errors.invalid(path, parsed.user, "user information is not permitted in the URL")
    if parsed.fragment:
        errors.invalid(path, parsed.fragment, "fragments are not permitted in the URL")
    if parsed.raw_query:
        errors.invalid(path, parsed.raw_query, "query parameters are not permitted in the URL")


def _validate_webhook_service(errors: FieldErrors, path: str, service: Mapping[str, Any]) -> None:
    if not service.get("name"):
        errors.required(f"{path}.name", "service name is required")
    if not service.get("namespace"):
        errors.required(f"{path}.namespace", "service namespace is required")
    port = service.get("port", 443)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        errors.invalid(f"{path}.port", port, "port is not valid: must be between 1 and 65535, inclusive")
    service_path = service.get("path")
    if service_path is None or str(service_path) in ("", "/"):
        return
    service_path = str(service_path)
    if service_path == "//":
        errors.invalid(f"{path}.path", service_path, "segment[0] may not be empty")
        return
    if not service_path.startswith("/"):
        errors.invalid(f"{path}.path", service_path, "must start with a '/'")
    for i, step in enumerate(service_path[1:].removesuffix("/").split("/")):
        if not step:
            errors.invalid(f"{path}.path", service_path, f"segment[{i}] may not be empty")
            continue
        for problem in subdomain_problems(step):
            errors.invalid(f"{path}.path", service_path, f"segment[{i}]: {problem}")


def _validate_mutating_webhooks(obj: Obj, errors: FieldErrors) -> None:
    _validate_webhooks(obj, errors, mutating=True)


def _validate_validating_webhooks(obj: Obj, errors: FieldErrors) -> None:
    _validate_webhooks(obj, errors, mutating=False)


def _validate_webhooks(obj: Obj, errors: FieldErrors, *, mutating: bool) -> None:
    """Each webhook in the order of `validate{Mutating,Validating}Webhook`: its name (`IsFullyQualifiedName`),
    rules, policies, side effects, timeout, selectors, reinvocation policy (mutating only) and client config;
    then its admissionReviewVersions, and last whether a webhook before it has its name, valid or not."""
    names: set[str] = set()
    for i, hook in enumerate(obj.get("webhooks") or []):
        hpath = f"webhooks[{i}]"
        if not isinstance(hook, dict):
            errors.invalid(hpath, hook, "must be an object")
            continue
        name = str(hook.get("name") or "")
        check_fully_qualified_name(errors, f"{hpath}.name", name)
        _validate_webhook_rules(errors, f"{hpath}.rules", hook.get("rules") or [])
        for field_name, allowed in (("failurePolicy", ["Fail", "Ignore"]), ("matchPolicy", ["Equivalent", "Exact"])):
            value = hook.get(field_name)
            if value is not None and value not in allowed:
                errors.not_supported(f"{hpath}.{field_name}", value, allowed)
        side_effects = hook.get("sideEffects")
        if side_effects is None:
            errors.required(f"{hpath}.sideEffects", "must specify one of None, NoneOnDryRun")
        elif side_effects not in ("None", "NoneOnDryRun"):
            errors.not_supported(f"{hpath}.sideEffects", side_effects, ["None", "NoneOnDryRun"])
        timeout = hook.get("timeoutSeconds", 10)
        if not isinstance(timeout, int) or not 1 <= timeout <= 30:
            errors.invalid(f"{hpath}.timeoutSeconds", timeout, "the timeout value must be between 1 and 30 seconds")
        for selector_field in ("namespaceSelector", "objectSelector"):
            try:
                selector_from_label_selector(hook.get(selector_field))
            except SelectorError as exc:
                errors.invalid(f"{hpath}.{selector_field}", hook.get(selector_field), str(exc))
        reinvocation = hook.get("reinvocationPolicy")
        if mutating and reinvocation is not None and reinvocation not in ("IfNeeded", "Never"):
            errors.not_supported(f"{hpath}.reinvocationPolicy", reinvocation, ["IfNeeded", "Never"])
        _validate_client_config(errors, f"{hpath}.clientConfig", hook.get("clientConfig") or {})
        _validate_admission_review_versions(
            errors, f"{hpath}.admissionReviewVersions", hook.get("admissionReviewVersions")
        )
        if name:
            if name in names:
                errors.duplicate(f"{hpath}.name", name)
            names.add(name)


_SLICE_PROTOCOLS = ["SCTP", "TCP", "UDP"]


def _validate_endpointslice(obj: Obj, errors: FieldErrors) -> None:
    """discovery.k8s.io/v1, in the API server's order: the address type; at most 1,000 endpoints, each
    with 1-100 addresses of that type (an IP of its family that is not special, or a domain name) and
    a DNS-1123 hostname; at most 100 ports, each named once, with a supported protocol."""
    address_type = obj.get("addressType")
    if address_type is None:
        errors.required("addressType")
    elif address_type not in ("IPv4", "IPv6", "FQDN"):
        errors.not_supported("addressType", address_type, ["FQDN", "IPv4", "IPv6"])
    endpoints = obj.get("endpoints") or []
    if len(endpoints) > 1000:
        errors.too_many("endpoints", len(endpoints), 1000)
    else:
        for i, endpoint in enumerate(endpoints):
            _validate_slice_endpoint(endpoint or {}, f"endpoints[{i}]", address_type, errors)
    ports = obj.get("ports") or []
    if len(ports) > 100:
        errors.too_many("ports", len(ports), 100)
        return
    names: set[str] = set()
    for i, raw in enumerate(ports):
        port = raw or {}
        name = str(port.get("name") or "")
        if name:
            check_label(errors, f"ports[{i}].name", name)
        if name in names:
            errors.duplicate(f"ports[{i}].name", name)
        names.add(name)
        protocol = port.get("protocol")
        if protocol is None:
            errors.required(f"ports[{i}].protocol")
        elif protocol not in _SLICE_PROTOCOLS:
            errors.not_supported(f"ports[{i}].protocol", protocol, _SLICE_PROTOCOLS)
        if port.get("appProtocol") is not None:
            for problem in qualified_name_problems(str(port["appProtocol"])):
                errors.invalid(f"ports[{i}].appProtocol", port["appProtocol"], problem)
        if port.get("port") is not None:
            check_port(errors, f"ports[{i}].port", port["port"])


def _validate_slice_endpoint(endpoint: Obj, path: str, address_type: Any, errors: FieldErrors) -> None:
    addresses = endpoint.get("addresses") or []
    if not addresses:
        errors.required(f"{path}.addresses", "must contain at least 1 address")
    elif len(addresses) > 100:
        errors.too_many(f"{path}.addresses", len(addresses), 100)
    for j, address in enumerate(addresses):
        at = f"{path}.addresses[{j}]"
        if address_type in ("IPv4", "IPv6"):
            check_endpoint_ip(errors, at, str(address), family=4 if address_type == "IPv4" else 6)
        elif address_type == "FQDN":
            check_fqdn(errors, at, str(address))
    if endpoint.get("hostname") is not None:
        check_label(errors, f"{path}.hostname", str(endpoint["hostname"]))


def _validate_endpointslice_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    if new.get("addressType") != old.get("addressType"):
        errors.invalid("addressType", new.get("addressType"), "field is immutable")


_EVICTION_POLICIES = ["AlwaysAllow", "IfHealthyBudget"]


def _validate_pdb(obj: Obj, errors: FieldErrors) -> None:
    """policy/v1 PodDisruptionBudget: one of minAvailable/maxUnavailable, each a count or a percent <= 100%."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if "minAvailable" in spec and "maxUnavailable" in spec:
        errors.invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set")
    for name in ("minAvailable", "maxUnavailable"):
        if name in spec:
            percent = _int_or_percent(errors, f"spec.{name}", spec[name])
            if isinstance(spec[name], str) and (percent or 0) > 100:
                errors.invalid(f"spec.{name}", spec[name], "must not be greater than 100%")
    try:
        selector_from_label_selector(spec.get("selector"))
    except SelectorError as exc:
        errors.invalid("spec.selector", spec.get("selector"), str(exc))
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy is not None and policy not in _EVICTION_POLICIES:
        errors.not_supported("spec.unhealthyPodEvictionPolicy", policy, _EVICTION_POLICIES)


def _default_hpa(obj: Obj) -> None:
    """autoscaling/v2 defaults: minReplicas 1; no metrics means CPU at 80% utilization."""
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec.setdefault("minReplicas", 1)
        if not spec.get("metrics"):
            target = {"type": "Utilization", "averageUtilization": 80}
            spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": target}}]


_METRIC_SOURCES = {
    "Object": "object",
    "Pods": "pods",
    "Resource": "resource",
    "ContainerResource": "containerResource",
    "External": "external",
}
_TARGET_TYPES = ("Utilization", "Value", "AverageValue")


def _validate_metric(errors: FieldErrors, path: str, metric: Any) -> None:
    """One entry of spec.metrics: its type names the one source it populates; a resource target is checked."""
    if not isinstance(metric, dict):
        errors.invalid(path, metric, "must be an object")
        return
    kind = metric.get("type")
    populated = [key for key in _METRIC_SOURCES.values() if metric.get(key) is not None]
    if not kind:
        errors.required(f"{path}.type", "must specify a metric source type")
        return
    if kind not in _METRIC_SOURCES:
        errors.not_supported(f"{path}.type", kind, sorted(_METRIC_SOURCES))
        return
    source = _METRIC_SOURCES[kind]
    if source not in populated:
        errors.required(f"{path}.{source}", "must populate information for the given metric source")
        return
    if populated != [source]:
        errors.forbidden(path, "must populate the given metric source only")
    body = metric[source]
    if source != "resource" or not isinstance(body, dict):
        return
    if not body.get("name"):
        errors.required(f"{path}.resource.name", "must specify a resource name")
    target = body.get("target")
    if not isinstance(target, dict):
        errors.required(f"{path}.resource.target")
        return
    ttype = target.get("type")
    if not ttype:
        errors.required(f"{path}.resource.target.type", "must specify a metric target type")
    elif ttype not in _TARGET_TYPES:
        errors.invalid(f"{path}.resource.target.type", ttype, "must be either Utilization, Value, or AverageValue")
    utilization = target.get("averageUtilization")
    if utilization is not None and (not isinstance(utilization, int) or utilization <= 0):
        errors.invalid(f"{path}.resource.target.averageUtilization", utilization, "must be greater than 0")
    if ttype == "Utilization" and utilization is None:
        errors.required(
            f"{path}.resource.target.averageUtilization", "must set either a target raw value or a target utilization"
        )
    if target.get("value") is not None:
        errors.forbidden(f"{path}.resource.target.value", "may not set value for resource metrics")


def _validate_hpa(obj: Obj, errors: FieldErrors) -> None:
    """autoscaling/v2 HorizontalPodAutoscaler (`validateHorizontalPodAutoscalerSpec`): 1 <= minReplicas <=
    maxReplicas, then the target reference (its kind and name path segments, `ValidateCrossVersionObjectReference`),
    then the metrics."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errors.required("spec")
        return
    low = spec.get("minReplicas", 1)
    high = spec.get("maxReplicas")
    if not isinstance(low, int) or low < 1:
        errors.invalid("spec.minReplicas", low, "must be greater than or equal to 1")
    if not isinstance(high, int) or high < 1:
        errors.invalid("spec.maxReplicas", high, "must be greater than 0")
    if isinstance(high, int) and isinstance(low, int) and high < low:
        errors.invalid("spec.maxReplicas", high, "must be greater than or equal to `minReplicas`")
    ref = spec.get("scaleTargetRef")
    ref = ref if isinstance(ref, dict) else {}
    for key in ("kind", "name"):
        if not ref.get(key):
            errors.required(f"spec.scaleTargetRef.{key}")
            continue
        for problem in path_segment_problems(str(ref[key])):
            errors.invalid(f"spec.scaleTargetRef.{key}", ref[key], problem)
    for i, metric in enumerate(spec.get("metrics") or []):
        _validate_metric(errors, f"spec.metrics[{i}]", metric)


_CRD_SCOPES = ["Cluster", "Namespaced"]


def _crd_names(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    names = spec.get("names") if isinstance(spec, dict) else None
    return names if isinstance(names, dict) else {}


def _default_crd(obj: Obj) -> None:
    """apiextensions/v1 defaults: the singular is the kind lowercased (by Go's rules), the list kind the kind
    and "List", and conversion strategy None; a version's missing `served` and `storage` decode as false."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict):
        kind = str(names.get("kind") or "")
        if not names.get("singular"):
            names["singular"] = go_lower(kind)
        if not names.get("listKind") and kind:
            names["listKind"] = f"{kind}List"
    for version in spec.get("versions") or []:
        if isinstance(version, dict):
            version.setdefault("served", False)
            version.setdefault("storage", False)
    if spec.get("conversion") is None:
        spec["conversion"] = {"strategy": "None"}


def _crd_name_problems(obj: Obj, name: str) -> list[str]:
    """A new CRD's name is `<plural>.<group>`, whatever they are (`ValidateCustomResourceDefinition`'s name
    function); its generateName is held to the same."""
    spec = obj.get("spec")
    group = str(spec.get("group") or "") if isinstance(spec, dict) else ""
    plural = str(_crd_names(obj).get("plural") or "")
    return [] if name == f"{plural}.{group}" else ['must be spec.names.plural+"."+spec.group']


def _validate_crd(obj: Obj, errors: FieldErrors) -> None:
    """The checks of apiextensions' validation that decide whether the CRD can be served, in its order: the
    group, the scope, the versions, then the names."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errors.required("spec")
        return
    group = spec.get("group")
    group_problems = subdomain_problems(str(group or ""))
    if not group:
        errors.required("spec.group")
    elif group_problems:
        errors.invalid("spec.group", group, ",".join(group_problems))
    elif "." not in str(group):
        errors.invalid("spec.group", group, "should be a domain with at least one dot")
    scope = spec.get("scope")
    if scope is None:
        errors.required("spec.scope")
    elif scope not in _CRD_SCOPES:
        errors.not_supported("spec.scope", scope, _CRD_SCOPES)
    _validate_crd_versions(spec.get("versions"), errors)
    _validate_crd_names(_crd_names(obj), errors)


def _validate_crd_names(names: Mapping[str, Any], errors: FieldErrors) -> None:
    """`spec.names` once defaulted: the four names required, then each checked
    (`ValidateCustomResourceDefinitionNames`): plural, singular, short names and categories DNS-1035 labels,
    kind and listKind such labels once lowercased, and listKind not the kind. A name's problems share one
    cause, joined by ','."""
    value = {key: str(names.get(key) or "") for key in ("plural", "singular", "kind", "listKind")}
    for key, given in value.items():
        if not given:
            errors.required(f"spec.names.{key}")
    for key in ("plural", "singular"):
        problems = dns1035_problems(value[key])
        if value[key] and problems:
            errors.invalid(f"spec.names.{key}", value[key], ",".join(problems))
    for key in ("kind", "listKind"):
        problems = dns1035_problems(go_lower(value[key]))
        if value[key] and problems:
            detail = "may have mixed case, but should otherwise match: " + ",".join(problems)
            errors.invalid(f"spec.names.{key}", value[key], detail)
    _check_crd_name_list(names, "shortNames", errors)
    if value["kind"] and value["kind"] == value["listKind"]:
        errors.invalid("spec.names.listKind", value["listKind"], "kind and listKind may not be the same")
    _check_crd_name_list(names, "categories", errors)


def _check_crd_name_list(names: Mapping[str, Any], key: str, errors: FieldErrors) -> None:
    """Each of a CRD's short names or categories is a DNS-1035 label, the empty one too."""
    for i, item in enumerate(names.get(key) or []):
        problems = dns1035_problems(str(item))
        if problems:
            errors.invalid(f"spec.names.{key}[{i}]", item, ",".join(problems))


_CRD_VERSION_TYPE = "apiextensions.CustomResourceDefinitionVersion"
# per-version fields the v1 conversion moves to the spec when every version has the same one: (key, Go type)
_CRD_LIFTED = {
    "schema": "apiextensions.CustomResourceValidation",
    "subresources": "apiextensions.CustomResourceSubresources",
    "additionalPrinterColumns": "apiextensions.CustomResourceColumnDefinition",
    "selectableFields": "apiextensions.SelectableField",
}


def _validate_crd_versions(versions: Any, errors: FieldErrors) -> None:
    """`spec.versions` as `validateCustomResourceDefinitionSpec` checks them: first every version without a
    schema, then each name a DNS-1035 label (its problems in one cause), then the names unique and exactly one
    version the storage version, both on the list. `served` and `storage` are plain booleans in v1: missing,
    they are false."""
    versions = [v for v in versions if isinstance(v, dict)] if isinstance(versions, list) else versions
    listed = versions if isinstance(versions, list) else []
    for i, version in enumerate(listed):
        if not isinstance((version.get("schema") or {}).get("openAPIV3Schema"), dict):
            errors.required(f"spec.versions[{i}].schema.openAPIV3Schema", "schemas are required")
    names = [str(version.get("name") or "") for version in listed]
    for i, name in enumerate(names):
        problems = dns1035_problems(name)
        if problems:
            errors.invalid(f"spec.versions[{i}].name", name, ",".join(problems))
    if len(set(names)) != len(names):
        errors.invalid("spec.versions", _go_crd_versions(versions), "must contain unique version names")
    if sum(version.get("storage") is True for version in listed) != 1:
        errors.invalid(
            "spec.versions", _go_crd_versions(versions), "must have exactly one version marked as storage version"
        )


def _go_crd_versions(versions: Any) -> GoSyntax:
    """The versions as the server prints them in an error: Go's `%#v` of the internal list, from which the
    v1 conversion took every per-version field all versions share (`Convert_v1_CustomResourceDefinitionSpec_To_
    apiextensions_CustomResourceDefinitionSpec`)."""
    if not isinstance(versions, list):
        return GoSyntax(f"[]{_CRD_VERSION_TYPE}(nil)")
    shared = {key for key in _CRD_LIFTED if len({_crd_version_field(v, key) for v in versions}) == 1}
    shown = []
    for version in versions:
        warning = version.get("deprecationWarning")
        fields = {
            "Name": go_string(str(version.get("name") or "")),
            "Served": "true" if version.get("served") is True else "false",
            "Storage": "true" if version.get("storage") is True else "false",
            "Deprecated": "true" if version.get("deprecated") is True else "false",
            "DeprecationWarning": go_pointer("string", warning is not None),
        }
        for key, go_type in _CRD_LIFTED.items():
            name = key[0].upper() + key[1:]
            value = None if key in shared else version.get(key)
            if key in ("schema", "subresources"):
                fields[name] = go_pointer(go_type, value is not None)
            elif value is None:
                fields[name] = f"[]{go_type}(nil)"
            else:
                items = ", ".join(_go_crd_list_item(go_type, item) for item in value)
                fields[name] = f"[]{go_type}{{{items}}}"
        shown.append(go_struct(_CRD_VERSION_TYPE, fields))
    return GoSyntax(f"[]{_CRD_VERSION_TYPE}{{{', '.join(shown)}}}")


def _crd_version_field(version: Mapping[str, Any], key: str) -> str:
    """A per-version field, for comparing versions as Go's semantic equality does: an empty list is no list."""
    value = version.get(key)
    if key in ("additionalPrinterColumns", "selectableFields") and not value:
        value = None
    return json.dumps(value, sort_keys=True)


def _go_crd_list_item(go_type: str, item: Any) -> str:
    """One printer column or selectable field in Go's `%#v`."""
    item = item if isinstance(item, dict) else {}
    if go_type.endswith("SelectableField"):
        return go_struct(go_type, {"JSONPath": go_string(str(item.get("jsonPath") or ""))})
    fields = {key: go_string(str(item.get(key) or "")) for key in ("name", "type", "format", "description")}
    priority = item.get("priority")
    return go_struct(
        go_type,
        {
            "Name": fields["name"],
            "Type": fields["type"],
            "Format": fields["format"],
            "Description": fields["description"],
            "Priority": str(priority if isinstance(priority, int) else 0),
            "JSONPath": go_string(str(item.get("jsonPath") or "")),
        },
    )


def _validate_crd_stored_versions(obj: Obj, errors: FieldErrors) -> None:
    """`ValidateCustomResourceDefinitionStoredVersions`: at least one stored version; every storage version among
    them; and every stored version still in spec.versions, reported at its last index. Go walks the versions
    left over in a map, in no set order: here they come in the order of their index."""
    status = obj.get("status")
    stored = status.get("storedVersions") if isinstance(status, dict) else None
    stored = [str(v) for v in stored] if isinstance(stored, list) else []
    shown = go_string_slice(stored or None)
    if not stored:
        errors.invalid("status.storedVersions", shown, "must have at least one stored version")
        return
    left = {version: i for i, version in enumerate(stored)}
    spec = obj.get("spec")
    versions = spec.get("versions") if isinstance(spec, dict) else None
    for version in versions if isinstance(versions, list) else []:
        if not isinstance(version, dict):
            continue
        name = str(version.get("name") or "")
        if version.get("storage") is True and name not in left:
            errors.invalid("status.storedVersions", shown, f"must have the storage version {name}")
        left.pop(name, None)
    for version, i in sorted(left.items(), key=lambda item: item[1]):
        errors.invalid(f"status.storedVersions[{i}]", version, "must appear in spec.versions")


def _prepare_crd_update(new: Obj, old: Obj) -> None:
    """The CRD strategy's PrepareForUpdate: the first storage version joins the stored versions (the stored
    object's) unless it is among them, so the objects written in it can still be read."""
    spec = new.get("spec")
    versions = spec.get("versions") if isinstance(spec, dict) else None
    listed = versions if isinstance(versions, list) else []
    storage = next((v for v in listed if isinstance(v, dict) and v.get("storage") is True), None)
    if storage is None:
        return
    status = new.get("status")
    if not isinstance(status, dict):
        status = new["status"] = {}
    stored = status.get("storedVersions")
    stored = stored if isinstance(stored, list) else []
    name = str(storage.get("name") or "")
    if name not in stored:
        status["storedVersions"] = [*stored, name]


def _validate_crd_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """What an established CRD may not change (`validateCustomResourceDefinitionSpecUpdate`): its scope and
    kind; nor any CRD its group and plural, which make its name. Then, as `validateCustomResourceDefinitionUpdate`
    goes on, its stored versions as the update leaves them."""
    new_spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    new_names, old_names = _crd_names(new), _crd_names(old)
    for path, now, before in (
        ("spec.scope", new_spec.get("scope"), old_spec.get("scope")),
        ("spec.names.kind", new_names.get("kind"), old_names.get("kind")),
        ("spec.group", new_spec.get("group"), old_spec.get("group")),
        ("spec.names.plural", new_names.get("plural"), old_names.get("plural")),
    ):
        if now != before:
            errors.invalid(path, now, "field is immutable")
    _validate_crd_stored_versions(new, errors)


def _crd_status(obj: Obj) -> Obj:
    """Established at once (the real server takes a moment), with the accepted names defaulted."""
    spec = obj.get("spec") or {}
    names = dict(spec.get("names") or {})
    kind = str(names.get("kind", ""))
    names.setdefault("singular", go_lower(kind))
    names.setdefault("listKind", f"{kind}List")
    storage = [v.get("name") for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("storage") is True]
    conditions = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": storage[:1]}


# -- the table -----------------------------------------------------------------------------------

POD_MERGE = {**META_MERGE, **pod_spec_merge("spec."), **CONDITIONS}
TEMPLATE_MERGE = {**META_MERGE, **pod_spec_merge("spec.template.spec."), **CONDITIONS}

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        namespaced=False,
        name_rule="label",
        short_names=("ns",),
        merge_keys={**META_MERGE, **CONDITIONS},
        fields={"status.phase": _get("status.phase")},
        defaults=_default_namespace,
        validate=_validate_namespace,
        status_subresource=True,
        initial_status=lambda _: {"phase": "Active"},
        prepare_create=_prepare_namespace,
        validate_status=_validate_namespace_status,
        return_deleted_object=True,
        delete_collection=False,
    ),
    ResourceType(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        namespaced=True,
        short_names=("cm",),
        merge_keys=META_MERGE,
        validate=_validate_configmap,
        validate_update=_validate_immutable_data,
    ),
    ResourceType(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        namespaced=True,
        merge_keys=META_MERGE,
        fields={"type": _get("type")},
        defaults=_default_secret,
        validate=_validate_secret,
        validate_update=_validate_immutable_data,
    ),
    ResourceType(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        namespaced=True,
        short_names=("sa",),
        merge_keys={**META_MERGE, "secrets": "name", "imagePullSecrets": "name"},
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        namespaced=True,
        short_names=("po",),
        categories=("all",),
        merge_keys=POD_MERGE,
        fields={
            "spec.nodeName": _get("spec.nodeName"),
            "spec.restartPolicy": _get("spec.restartPolicy"),
            "spec.schedulerName": _get("spec.schedulerName"),
            "spec.serviceAccountName": _get("spec.serviceAccountName"),
            "spec.hostNetwork": _get("spec.hostNetwork"),
            "status.phase": _get("status.phase"),
            "status.podIP": _get("status.podIP"),
            "status.nominatedNodeName": _get("status.nominatedNodeName"),
        },
        defaults=_default_pod,
        validate=_validate_pod,
        validate_create=_validate_pod_create,
        validate_update=_validate_pod_update,
        # no generation: a 1.32 server leaves a Pod's metadata.generation alone (1.33 began to count it)
        status_subresource=True,
        initial_status=_pod_status,
        return_deleted_object=True,
    ),
    ResourceType(
        "",
        "v1",
        "services",
        "service",
        "Service",
        namespaced=True,
        name_rule="dns1035",
        short_names=("svc",),
        categories=("all",),
        merge_keys={**META_MERGE, "spec.ports": "port", **CONDITIONS},
        defaults=default_service,
        validate=validate_service,
        validate_update=validate_service_update,
        update_checks_first=True,
        status_subresource=True,
        initial_status=lambda _: {"loadBalancer": {}},
        return_deleted_object=True,
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        namespaced=True,
        short_names=("deploy",),
        categories=("all",),
        merge_keys=TEMPLATE_MERGE,
        defaults=_default_deployment,
        validate=_validate_deployment,
        validate_update=_validate_workload_update,
        generation_fields=("spec",),
        status_subresource=True,
        scale_subresource=True,
        initial_status=lambda _: {},
    ),
    ResourceType(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        namespaced=True,
        short_names=("rs",),
        categories=("all",),
        merge_keys=TEMPLATE_MERGE,
        defaults=_default_template,
        validate=_validate_workload,
        validate_update=_validate_workload_update,
        generation_fields=("spec",),
        status_subresource=True,
        scale_subresource=True,
        initial_status=lambda _: {"replicas": 0},
    ),
    ResourceType(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        namespaced=True,
        short_names=("sts",),
        categories=("all",),
        merge_keys=TEMPLATE_MERGE,
        defaults=_default_statefulset,
        validate=_validate_statefulset,
        validate_update=_validate_statefulset_update,
        generation_fields=("spec",),
        status_subresource=True,
        scale_subresource=True,
        initial_status=lambda _: {"replicas": 0, "availableReplicas": 0},
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        namespaced=False,
        merge_keys={**META_MERGE, "webhooks": "name"},
        defaults=_default_mutating_webhooks,
        validate=_validate_mutating_webhooks,
        generation_fields=("webhooks",),
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        namespaced=False,
        merge_keys={**META_MERGE, "webhooks": "name"},
        defaults=_default_validating_webhooks,
        validate=_validate_validating_webhooks,
        schema=VALIDATING_WEBHOOKS_SCHEMA,
        generation_fields=("webhooks",),
    ),
    ResourceType(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        namespaced=True,
        merge_keys=META_MERGE,
        schema=LEASE_SCHEMA,
    ),
    ResourceType(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        namespaced=True,
        name_rule="path_segment",
        strategy_checks_metadata=False,
        short_names=("pdb",),
        merge_keys={**META_MERGE, **CONDITIONS},
        validate=_validate_pdb,
        generation_fields=("spec",),
        status_subresource=True,
        initial_status=lambda _: {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0},
    ),
    ResourceType(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        namespaced=True,
        short_names=("hpa",),
        categories=("all",),
        merge_keys={**META_MERGE, **CONDITIONS},
        defaults=_default_hpa,
        validate=_validate_hpa,
        status_subresource=True,
        initial_status=lambda _: {"desiredReplicas": 0},
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        namespaced=False,
        name_rule="rbac",
        merge_keys=META_MERGE,
        validate_create=rbac.validate_cluster_role,
        update_validates_object_meta=True,
        validate_update=rbac.validate_cluster_role_update,
        schema=CLUSTER_ROLE_SCHEMA,
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        namespaced=False,
        name_rule="rbac",
        merge_keys=META_MERGE,
        defaults=rbac.default_binding,
        validate_create=rbac.validate_cluster_role_binding,
        update_validates_object_meta=True,
        validate_update=rbac.validate_cluster_role_binding_update,
        schema=ROLE_BINDING_SCHEMA,
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        namespaced=True,
        name_rule="rbac",
        merge_keys=META_MERGE,
        validate_create=rbac.validate_role,
        update_validates_object_meta=True,
        validate_update=rbac.validate_role_update,
        schema=ROLE_SCHEMA,
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        namespaced=True,
        name_rule="rbac",
        merge_keys=META_MERGE,
        defaults=rbac.default_binding,
        validate_create=rbac.validate_role_binding,
        update_validates_object_meta=True,
        validate_update=rbac.validate_role_binding_update,
        schema=ROLE_BINDING_SCHEMA,
    ),
    ResourceType(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        namespaced=True,
        merge_keys=META_MERGE,
        fields={"addressType": _get("addressType")},
        defaults=_default_endpointslice,
        validate=_validate_endpointslice,
        validate_update=_validate_endpointslice_update,
        generation_fields=("addressType", "endpoints", "ports"),
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        merge_keys={**META_MERGE, "spec.versions": "name", **CONDITIONS},
        name_problems=_crd_name_problems,
        defaults=_default_crd,
        validate=_validate_crd,
        validate_create=_validate_crd_stored_versions,
        validate_update=_validate_crd_update,
        prepare_update=_prepare_crd_update,
        generation_fields=("spec",),
        status_subresource=True,
        initial_status=_crd_status,
        return_deleted_object=True,
    ),
)

BY_KEY = {r.key: r for r in RESOURCES}

# Create-only APIs that store nothing (served by the server's token handlers), as discovery lists them.
CREATE_ONLY: dict[tuple[str, str], tuple[dict[str, Any], ...]] = {
    ("", "v1"): (
        {"name": "pods/binding", "singularName": "", "namespaced": True, "kind": "Binding", "verbs": ["create"]},
        {
            "name": "serviceaccounts/token",
            "singularName": "",
            "namespaced": True,
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        },
    ),
    ("authentication.k8s.io", "v1"): (
        {"name": "tokenreviews", "singularName": "", "namespaced": False, "kind": "TokenReview", "verbs": ["create"]},
    ),
}


def find(group: str, version: str, plural: str, *, served: Sequence[ResourceType] = RESOURCES) -> ResourceType | None:
    for resource in served:
        if resource.group == group and resource.version == version and resource.plural == plural:
            return resource
    return None


def group_versions(served: Sequence[ResourceType] = RESOURCES) -> dict[str, list[str]]:
    """Group name -> versions served, in first-seen order (core group under "")."""
    groups: dict[str, list[str]] = {}
    for resource in served:
        versions = groups.setdefault(resource.group, [])
        if resource.version not in versions:
            versions.append(resource.version)
    for group, version in CREATE_ONLY:
        versions = groups.setdefault(group, [])
        if version not in versions:
            versions.append(version)
    return groups
