"""The cluster as the operator commands see it: read once from the API server, then plain data.

`read_cluster(api, namespace=...)` lists what `analyze`, `injector list` and `check-inject` need
(namespaces, pods, ReplicaSets for owners, the injection webhook configurations, the Services
those webhooks call, the injector ConfigMaps) and hands the raw objects to
`ClusterState.from_objects`, which is also how tests build a state without a server.

What is kept:
- injector configurations: every MutatingWebhookConfiguration labelled `istio.io/rev`, with only
  its webhooks whose names end in `sidecar-injector.istio.io`; `istio.io/tag` marks a tag;
- per revision, the injector ConfigMap `istio-sidecar-injector[-<rev>]` (labelled `istio.io/rev`)
  parsed with the injector's own parser: the proxy image and the server-side policy;
- per pod: labels, annotations, the `istio-proxy` image, the injected revision (the
  `sidecar.istio.io/status` annotation's `revision`, else the `istio.io/rev` annotation) and the
  owning workload (pod -> ReplicaSet -> Deployment; StatefulSet, DaemonSet and others directly).

Errors: `read_cluster` lets `KubeApiError` and transport errors (aiohttp/OS errors) through for the
command to report; malformed objects are read leniently (a field of the wrong type counts as absent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.jsontext import load_json
from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.literals import whole_number
from webhook.config import ConfigError, InjectionConfig
from webhook.configparse import parse_injection_config

REVISION_LABEL = "istio.io/rev"
TAG_LABEL = "istio.io/tag"
INJECTION_LABEL = "istio-injection"
INJECT_KEY = "sidecar.istio.io/inject"
STATUS_ANNOTATION = "sidecar.istio.io/status"
PROXY_CONTAINER = "istio-proxy"
INJECTOR_SUFFIX = "sidecar-injector.istio.io"
INJECTOR_CONFIGMAP = "istio-sidecar-injector"
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
DEPLOYMENT_REVISION = "deployment.kubernetes.io/revision"

_LIST_PAGE = 500


def _strings(value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return MappingProxyType({})
    return MappingProxyType({k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)})


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(obj.get("metadata"))


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference with `controller: true`, else the first one, else None."""
    refs = [_dict(r) for r in _list(meta.get("ownerReferences"))]
    for ref in refs:
        if ref.get("controller") is True:
            return ref
    return refs[0] if refs else None


@dataclass(frozen=True, kw_only=True, order=True)
class Workload:
    """What owns a pod, as far as restarting goes: a Deployment, StatefulSet, DaemonSet, another
    controller (ReplicaSet without Deployment, Job, ...) or the bare pod itself (kind `Pod`)."""

    kind: str
    namespace: str
    name: str

    def restart_command(self, pods: Sequence[str], *, reinjected: bool = False, on_delete: bool = False) -> str:
        """`kubectl rollout restart` for the kinds that support it, unless their update strategy is `on_delete`
        (a restart would change the template and replace no pod); for a bare pod the injector will inject
        again (`reinjected`: its namespace and labels select an installed revision), replacing it by itself,
        which meshplane's injector strips and injects anew; else deleting `pods` (sorted), which a controller
        creates again."""
        if self.kind in RESTARTABLE and not on_delete:
            return f"kubectl rollout restart {self.kind.lower()}/{self.name} -n {self.namespace}"
        if self.kind == "Pod" and reinjected:
            return f"kubectl get pod {self.name} -n {self.namespace} -o yaml | kubectl replace --force -f -"
        return f"kubectl delete pod {' '.join(sorted(pods))} -n {self.namespace}"


@dataclass(frozen=True, kw_only=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, kw_only=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner: Workload
    proxy_image: str | None  # image of the `istio-proxy` container (or native-sidecar init container)
    injected_revision: str | None
    manifest: Mapping[str, Any]  # the pod as read, for the injector's own policy

    @property
    def injection_disabled(self) -> bool:
        """The pod opts out: `sidecar.istio.io/inject` label (else annotation) is `false`, any case."""
        value = self.labels.get(INJECT_KEY, self.annotations.get(INJECT_KEY, ""))
        return value.lower() == "false"

    @property
    def host_network(self) -> bool:
        return _dict(self.manifest.get("spec")).get("hostNetwork") is True

    @property
    def debugged(self) -> bool:
        """It holds ephemeral containers (`kubectl debug`), which no create may carry."""
        return bool(_dict(self.manifest.get("spec")).get("ephemeralContainers"))


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """One injection webhook: its selectors as stored (None: match everything) and the Service it calls."""

    name: str
    namespace_selector: Mapping[str, Any] | None
    object_selector: Mapping[str, Any] | None
    service: tuple[str, str] | None  # (namespace, name); None for a `url` webhook


@dataclass(frozen=True, kw_only=True)
class InjectorConfig:
    """A MutatingWebhookConfiguration labelled `istio.io/rev`: a revision's, or a tag's (`tag` set)."""

    name: str
    revision: str
    tag: str | None
    webhooks: tuple[Webhook, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, kw_only=True)
class RevisionConfig:
    """A revision's injector ConfigMap: `config` is None (and `error` says why) when it does not parse."""

    configmap: str
    config: InjectionConfig | None
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class ClusterState:
    """Everything the operator commands decide on. `scope` is the namespace read, or None for all."""

    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    injectors: tuple[InjectorConfig, ...]
    services: frozenset[tuple[str, str]]
    revisions: Mapping[str, RevisionConfig]
    scope: str | None = None
    # the annotations of the controllers that own pods: a ReplicaSet's, StatefulSet's, DaemonSet's or Job's
    # own, and a Deployment's as its controller copies them to its newest ReplicaSet
    owner_annotations: Mapping[Workload, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    # the StatefulSets and DaemonSets whose update strategy is OnDelete: a template change replaces no pod
    on_delete: frozenset[Workload] = frozenset()

    @classmethod
    def from_objects(
        cls,
        objects: Iterable[Mapping[str, Any]],
        *,
        scope: str | None = None,
    ) -> ClusterState:
        """Build the state from raw API objects of any kinds (others are ignored). Never raises."""
        by_kind: dict[str, list[Mapping[str, Any]]] = {}
        for obj in objects:
            if isinstance(obj, Mapping):
                by_kind.setdefault(str(obj.get("kind", "")), []).append(obj)
        replicasets = {
            (str(_meta(rs).get("namespace", "")), str(_meta(rs).get("name", ""))): rs
            for rs in by_kind.get("ReplicaSet", [])
        }
        namespaces = tuple(
            sorted(
                (Namespace(name=str(_meta(o).get("name", "")), labels=_strings(_meta(o).get("labels")),
                           annotations=_strings(_meta(o).get("annotations")))
                 for o in by_kind.get("Namespace", [])),
                key=lambda n: n.name,
            )
        )  # fmt: skip
        pods = tuple(
            sorted((_pod(o, replicasets) for o in by_kind.get("Pod", [])), key=lambda p: (p.namespace, p.name))
        )
        injectors = tuple(
            sorted(
                filter(None, (_injector(o) for o in by_kind.get("MutatingWebhookConfiguration", []))),
                key=lambda c: c.name,
            )
        )
        services = frozenset(
            (str(_meta(o).get("namespace", "")), str(_meta(o).get("name", ""))) for o in by_kind.get("Service", [])
        )
        revisions: dict[str, RevisionConfig] = {}
        for cm in by_kind.get("ConfigMap", []):
            meta = _meta(cm)
            revision = _strings(meta.get("labels")).get(REVISION_LABEL)
            name = str(meta.get("name", ""))
            if revision is not None and name.startswith(INJECTOR_CONFIGMAP):
                revisions[revision] = _revision_config(name, cm)
        return cls(
            namespaces=namespaces,
            pods=pods,
            injectors=injectors,
            services=services,
            revisions=MappingProxyType(revisions),
            scope=scope,
            owner_annotations=_owner_annotations(
                replicasets.values(), [o for kind in _OWNER_KINDS for o in by_kind.get(kind, [])]
            ),
            on_delete=frozenset(
                Workload(kind=kind, namespace=str(_meta(o).get("namespace", "")), name=str(_meta(o).get("name", "")))
                for kind in ("StatefulSet", "DaemonSet")
                for o in by_kind.get(kind, [])
                if _dict(_dict(o.get("spec")).get("updateStrategy")).get("type") == "OnDelete"
            ),
        )

    def without_revision(self, revision: str) -> ClusterState:
        """The state once `revision` is removed as its release removes it: its own webhook configurations,
        its injector ConfigMap and the Services they call. Tags pointing at it stay (they are not part of
        the release), calling a Service that is gone."""
        removed = [c for c in self.injectors if c.revision == revision and c.tag is None]
        called = {hook.service for config in removed for hook in config.webhooks if hook.service is not None}
        return dataclasses.replace(
            self,
            injectors=tuple(c for c in self.injectors if c not in removed),
            services=self.services - called,
            revisions=MappingProxyType({k: v for k, v in self.revisions.items() if k != revision}),
        )

    def namespace(self, name: str) -> Namespace:
        """The namespace named `name` (one without labels if it was not read)."""
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        return Namespace(name=name)

    @property
    def revision_names(self) -> frozenset[str]:
        """Installed revisions: the `istio.io/rev` of configurations that are not tags."""
        return frozenset(c.revision for c in self.injectors if c.tag is None)

    @property
    def tag_names(self) -> Mapping[str, str]:
        """Tag -> the revision it points at."""
        return MappingProxyType({c.tag: c.revision for c in self.injectors if c.tag is not None})

    def injection_config(self, revision: str) -> InjectionConfig:
        """The revision's injector config; the injector's defaults when its ConfigMap is missing or invalid."""
        found = self.revisions.get(revision)
        return found.config if found is not None and found.config is not None else InjectionConfig()

    def proxy_image(self, revision: str) -> str | None:
        """The sidecar image `revision` injects, or None when its ConfigMap is missing or invalid."""
        found = self.revisions.get(revision)
        return found.config.proxy_image if found is not None and found.config is not None else None


def _owner_annotations(
    replicasets: Iterable[Mapping[str, Any]], others: Iterable[Mapping[str, Any]]
) -> Mapping[Workload, Mapping[str, str]]:
    """Per ReplicaSet, StatefulSet, DaemonSet and Job (`others`) its annotations; per Deployment those of its
    ReplicaSet of the highest `deployment.kubernetes.io/revision`, the one its controller keeps the
    Deployment's annotations on."""
    found: dict[Workload, Mapping[str, str]] = {}
    for obj in others:
        meta = _meta(obj)
        owner = Workload(
            kind=str(obj.get("kind")), namespace=str(meta.get("namespace", "")), name=str(meta.get("name", ""))
        )
        found[owner] = _strings(meta.get("annotations"))
    newest: dict[Workload, int] = {}
    for rs in replicasets:
        meta = _meta(rs)
        namespace, annotations = str(meta.get("namespace", "")), _strings(meta.get("annotations"))
        found[Workload(kind="ReplicaSet", namespace=namespace, name=str(meta.get("name", "")))] = annotations
        parent = _controller(meta)
        if parent is None or parent.get("kind") != "Deployment":
            continue
        deployment = Workload(kind="Deployment", namespace=namespace, name=str(parent.get("name", "")))
        revision = whole_number(annotations.get(DEPLOYMENT_REVISION, "")) or 0
        if revision >= newest.get(deployment, -1):
            newest[deployment], found[deployment] = revision, annotations
    return MappingProxyType(found)


def _revision_config(name: str, cm: Mapping[str, Any]) -> RevisionConfig:
    try:
        config = parse_injection_config(injector=_strings(cm.get("data")), mesh=None)
    except ConfigError as exc:
        return RevisionConfig(configmap=name, config=None, error=str(exc))
    return RevisionConfig(configmap=name, config=config)


STATUS_DEPTH = 10  # the injector's status annotation nests 2 deep; anyone who creates pods can write one


def injected_revision(annotations: Mapping[str, str]) -> str | None:
    """The revision that injected a pod: the status annotation's `revision`, else `istio.io/rev`."""
    try:
        status = load_json(annotations.get(STATUS_ANNOTATION, ""), max_depth=STATUS_DEPTH)
    except ValueError:
        status = None
    if isinstance(status, Mapping) and isinstance(status.get("revision"), str) and status["revision"]:
        return str(status["revision"])
    return annotations.get(REVISION_LABEL) or None


def _proxy_image(spec: Mapping[str, Any]) -> str | None:
    for key in ("containers", "initContainers"):
        for container in map(_dict, _list(spec.get(key))):
            if container.get("name") == PROXY_CONTAINER:
                return str(container.get("image", ""))
    return None


def _owner(meta: Mapping[str, Any], replicasets: Mapping[tuple[str, str], Mapping[str, Any]]) -> Workload:
    namespace = str(meta.get("namespace", ""))
    ref = _controller(meta)
    if ref is None:
        return Workload(kind="Pod", namespace=namespace, name=str(meta.get("name", "")))
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if kind == "ReplicaSet":
        rs = replicasets.get((namespace, name))
        parent = _controller(_meta(rs)) if rs is not None else None
        if parent is not None and parent.get("kind") == "Deployment":
            return Workload(kind="Deployment", namespace=namespace, name=str(parent.get("name", "")))
    return Workload(kind=kind, namespace=namespace, name=name)


def _pod(obj: Mapping[str, Any], replicasets: Mapping[tuple[str, str], Mapping[str, Any]]) -> Pod:
    meta = _meta(obj)
    annotations = _strings(meta.get("annotations"))
    return Pod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=_strings(meta.get("labels")),
        annotations=annotations,
        owner=_owner(meta, replicasets),
        proxy_image=_proxy_image(_dict(obj.get("spec"))),
        injected_revision=injected_revision(annotations),
        manifest=obj,
    )


def _selector(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _injector(obj: Mapping[str, Any]) -> InjectorConfig | None:
    meta = _meta(obj)
    labels = _strings(meta.get("labels"))
    revision = labels.get(REVISION_LABEL)
    if revision is None:
        return None
    hooks = []
    for hook in map(_dict, _list(obj.get("webhooks"))):
        name = str(hook.get("name", ""))
        if not name.endswith(INJECTOR_SUFFIX):
            continue
        service = _dict(_dict(hook.get("clientConfig")).get("service"))
        hooks.append(
            Webhook(
                name=name,
                namespace_selector=_selector(hook.get("namespaceSelector")),
                object_selector=_selector(hook.get("objectSelector")),
                service=(str(service.get("namespace", "")), str(service.get("name", ""))) if service else None,
            )
        )
    return InjectorConfig(
        name=str(meta.get("name", "")),
        revision=revision,
        tag=labels.get(TAG_LABEL),
        webhooks=tuple(hooks),
        annotations=_strings(meta.get("annotations")),
    )


# -- reading ------------------------------------------------------------------------------------


async def _list_all(api: KubeApi, path: str, *, kind: str, label_selector: str = "") -> list[JsonObject]:
    """Every item of a list (in pages), each with its `kind` filled in (list items carry none)."""
    items: list[JsonObject] = []
    token = ""
    while True:
        query = [("limit", str(_LIST_PAGE))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if token:
            query.append(("continue", token))
        page = await api.request("GET", path, query=query)
        items.extend({**item, "kind": kind} for item in _list(page.get("items")) if isinstance(item, dict))
        token = str(_dict(page.get("metadata")).get("continue") or "")
        if not token:
            return items


def _scoped(prefix: str, namespace: str | None, plural: str) -> str:
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


async def read_cluster(api: KubeApi, *, namespace: str | None, pods: bool = True) -> ClusterState:
    """Read the state for `namespace` (None: every namespace). `pods=False` skips pods and ReplicaSets.

    A missing namespace raises `KubeApiError` 404 (reason NotFound) from its GET.
    """
    objects: list[JsonObject] = []
    if namespace:
        objects.append({**await api.request("GET", f"/api/v1/namespaces/{namespace}"), "kind": "Namespace"})
    else:
        objects += await _list_all(api, "/api/v1/namespaces", kind="Namespace")
    if pods:
        objects += await _list_all(api, _scoped("/api/v1", namespace, "pods"), kind="Pod")
        objects += await _list_all(api, _scoped("/apis/apps/v1", namespace, "replicasets"), kind="ReplicaSet")
        objects += await _owners(api, namespace)
    configs = await _list_all(
        api,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        kind="MutatingWebhookConfiguration",
        label_selector=REVISION_LABEL,
    )
    objects += configs
    objects += await _list_all(api, "/api/v1/configmaps", kind="ConfigMap", label_selector=REVISION_LABEL)
    objects += await _services(api, ClusterState.from_objects(configs).injectors)
    return ClusterState.from_objects(objects, scope=namespace)


_OWNER_KINDS = {"StatefulSet": ("/apis/apps/v1", "statefulsets"), "DaemonSet": ("/apis/apps/v1", "daemonsets"),
                "Job": ("/apis/batch/v1", "jobs")}  # fmt: skip


async def _owners(api: KubeApi, namespace: str | None) -> list[JsonObject]:
    """The StatefulSets, DaemonSets and Jobs, whose annotations suppress messages about them. A kind the
    caller may not list (403), or the server does not serve (404), is left out: messages about its objects
    are then shown, whatever their annotations say."""
    found: list[JsonObject] = []
    for kind, (prefix, plural) in _OWNER_KINDS.items():
        try:
            found += await _list_all(api, _scoped(prefix, namespace, plural), kind=kind)
        except KubeApiError as exc:
            if exc.status not in (403, 404):
                raise
    return found


async def _services(api: KubeApi, injectors: Sequence[InjectorConfig]) -> list[JsonObject]:
    """The Services the webhooks call that exist (one GET each; 404 means missing)."""
    wanted = sorted({hook.service for config in injectors for hook in config.webhooks if hook.service})
    found: list[JsonObject] = []
    for ns, name in wanted:
        try:
            found.append({**await api.request("GET", f"/api/v1/namespaces/{ns}/services/{name}"), "kind": "Service"})
        except KubeApiError as exc:
            if exc.status != 404:
                raise
    return found
