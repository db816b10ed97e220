"""`inject_pod`: the pure sidecar-injection function shared by the webhook and `meshplane inject`.

Input: a pod (a Kubernetes Pod object, or a pod template's `metadata` + `spec`) and the
`InjectionParams` of the control plane. Output: the injected pod. No I/O, no clock, no randomness:
the same pod and params always give the same result.

What injection does (Istio's sidecar template, see ISTIO-FACTS.md):
- `istio-init` (iptables redirect) first among the init containers, unless interception is `NONE`
  or the template is `grpc-agent`;
- `istio-proxy` as a native sidecar (an init container with `restartPolicy: Always`, right after
  `istio-init`, before the user's init containers) or, with `sidecar.istio.io/nativeSidecar:
  "false"` or `nativeSidecar: false` in the config, as the last container (the first one when
  ProxyConfig `holdApplicationUntilProxyStarts` is true);
- its env, the volumes it mounts, labels (`security.istio.io/tlsMode`, canonical name/revision),
  annotations (`istio.io/rev`, default container, prometheus merge) and `sidecar.istio.io/status`;
- HTTP/TCP/gRPC probes of application containers rewritten to the agent's status port
  (`/app-health/<container>/{readyz,livez,startupz}`), the originals in `ISTIO_KUBE_APP_PROBERS`
  with named ports resolved (a named port the container does not declare is an `InvalidPod`);
- prometheus merge: `prometheus.io/{port,path,scrape}` point at the agent (15020,
  `/stats/prometheus`), the user's values saved in `ISTIO_PROMETHEUS_ANNOTATIONS`; skipped when
  the mesh disables it, with `prometheus.istio.io/merge-metrics: "false"`, and (meshplane's choice)
  when the pod says `prometheus.io/scrape: "false"`;
- resources: any of the four `sidecar.istio.io/proxy{CPU,Memory}[Limit]` annotations replaces
  the configured resources entirely (Istio's rule), for `istio-init` too; a request above its
  limit is rejected;
- with `inject.istio.io/templates: grpc-agent` (proxyless gRPC) an agent-only `istio-proxy` (no
  Envoy, `ISTIO_META_GENERATOR=grpc`), and every application container gets `GRPC_XDS_BOOTSTRAP`
  and the shared volumes.

A container named `istio-proxy` (or `istio-init`) that the user put in the pod overrides fields of
the injected one: objects merge recursively, `env` merges by `name`, `ports` by `containerPort`,
`volumeMounts` by `mountPath` (Kubernetes' strategic-merge keys), other values replace.

Idempotence: when the pod carries `sidecar.istio.io/status`, injection first undoes the previous
injection (strip) and then injects again, so injecting an injected pod gives the same pod. Strip
removes what the status lists, restores rewritten probes from `ISTIO_KUBE_APP_PROBERS` and the
user's prometheus annotations from `ISTIO_PROMETHEUS_ANNOTATIONS`; the status also records what
Istio's does not need but exact strip-and-redo does: the user's override containers
(`overrides`) and what grpc-agent added to application containers (`appContainers`).

Errors: an invalid annotation raises `InjectionError` (annotation, value, problem). Annotations
under Istio's injection prefixes that meshplane does not implement are rejected the same way
rather than ignored. A structurally malformed pod raises `InvalidPod` naming the field path.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from webhook import validate as v
from webhook.config import TEMPLATES, InjectionConfig
from webhook.limits import MAX_ANNOTATIONS_BYTES, annotations_size, load_json
from webhook.validate import InjectionError, InvalidPod

__all__ = ["InjectionError", "InjectionParams", "InvalidPod", "inject_pod", "workload_identity"]

T = TypeVar("T")

PROXY = "istio-proxy"
INIT = "istio-init"
STATUS = "sidecar.istio.io/status"
PROXY_UID = 1337
DEFAULT_STATUS_PORT = 15020
CLUSTER_DOMAIN = "cluster.local"

A_INJECT = "sidecar.istio.io/inject"
A_CPU = "sidecar.istio.io/proxyCPU"
A_MEMORY = "sidecar.istio.io/proxyMemory"
A_CPU_LIMIT = "sidecar.istio.io/proxyCPULimit"
A_MEMORY_LIMIT = "sidecar.istio.io/proxyMemoryLimit"
A_IMAGE = "sidecar.istio.io/proxyImage"
A_INTERCEPTION = "sidecar.istio.io/interceptionMode"
A_REWRITE = "sidecar.istio.io/rewriteAppHTTPProbers"
A_NATIVE = "sidecar.istio.io/nativeSidecar"
A_LOG_LEVEL = "sidecar.istio.io/logLevel"
A_COMPONENT_LOG_LEVEL = "sidecar.istio.io/componentLogLevel"
A_INCLUDE_IPS = "traffic.sidecar.istio.io/includeOutboundIPRanges"
A_EXCLUDE_IPS = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
A_INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
A_EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
A_INCLUDE_OUTBOUND = "traffic.sidecar.istio.io/includeOutboundPorts"
A_EXCLUDE_OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"
A_PROXY_CONFIG = "proxy.istio.io/config"
A_TEMPLATES = "inject.istio.io/templates"
A_MERGE_METRICS = "prometheus.istio.io/merge-metrics"

SUPPORTED_ANNOTATIONS = frozenset(
    {
        A_INJECT,
        STATUS,
        A_CPU,
        A_MEMORY,
        A_CPU_LIMIT,
        A_MEMORY_LIMIT,
        A_IMAGE,
        A_INTERCEPTION,
        A_REWRITE,
        A_NATIVE,
        A_LOG_LEVEL,
        A_COMPONENT_LOG_LEVEL,
        A_INCLUDE_IPS,
        A_EXCLUDE_IPS,
        A_INCLUDE_INBOUND,
        A_EXCLUDE_INBOUND,
        A_INCLUDE_OUTBOUND,
        A_EXCLUDE_OUTBOUND,
        A_PROXY_CONFIG,
        A_TEMPLATES,
        A_MERGE_METRICS,
    }
)
# Annotations under these prefixes configure injection in Istio; meshplane rejects the ones it
# does not implement instead of silently ignoring them.
INJECTION_PREFIXES = (
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
    "proxy.istio.io/",
    "inject.istio.io/",
    "status.sidecar.istio.io/",
    "readiness.status.sidecar.istio.io/",
    "prometheus.istio.io/",
)

PROBERS_ENV = "ISTIO_KUBE_APP_PROBERS"
PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
_PROBES = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))
_PROBE_ACTIONS = ("httpGet", "tcpSocket", "grpc")
_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,10}$")

GRPC_BOOTSTRAP = "/etc/istio/proxy/grpc-bootstrap.json"


@dataclass(frozen=True, kw_only=True)
class InjectionParams:
    """Who is injecting: the control plane revision and identity, and the pod's namespace.

    `discovery_address` is `istiod[-<rev>].<control-plane-ns>.svc:15012` (used for CA_ADDR and as
    the default `discoveryAddress` of PROXY_CONFIG). `workload_*` override the workload identity
    that is otherwise derived from the pod's ownerReferences; `meshplane inject` sets them from
    the enclosing Deployment, Job, ... (`workload_kind` "" means Pod, `workload_api_version` ""
    means v1).
    """

    revision: str
    namespace: str
    config: InjectionConfig
    discovery_address: str
    trust_domain: str
    cluster_id: str
    network: str = ""
    workload_name: str = ""
    workload_kind: str = ""
    workload_api_version: str = ""


@dataclass(frozen=True, kw_only=True)
class _Options:
    template: str
    native: bool
    interception: str
    rewrite_probes: bool
    include_ips: str
    exclude_ips: str
    include_inbound: str
    exclude_inbound: str
    include_outbound: str
    exclude_outbound: str
    resources: dict[str, Any]
    proxy_image: str
    init_image: str
    proxy_config: dict[str, Any]
    log_level: str
    component_log_level: str
    hold: bool
    status_port: int
    prometheus_merge: bool


# -- structural reads (InvalidPod) --------------------------------------------------------------


def _object(parent: dict[str, Any], key: str, path: str, *, create: bool = False) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is None:
        if create:
            parent[key] = value = {}
        return value
    if not isinstance(value, dict):
        raise InvalidPod(path, f"must be an object, got {v.type_name(value)}")
    return value


def _list(parent: Mapping[str, Any], key: str, path: str) -> list[Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidPod(path, f"must be a list, got {v.type_name(value)}")
    return value


def _objects(parent: Mapping[str, Any], key: str, path: str, *, named: bool = False) -> list[dict[str, Any]]:
    items = _list(parent, key, path) or []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidPod(f"{path}[{index}]", f"must be an object, got {v.type_name(item)}")
        if named and (not isinstance(item.get("name"), str) or not item["name"]):
            raise InvalidPod(f"{path}[{index}].name", "is required and must be a non-empty string")
    return items


def _string_map(meta: dict[str, Any], key: str) -> dict[str, str]:
    value = _object(meta, key, f"metadata.{key}", create=True)
    assert value is not None
    for name, item in value.items():
        if not isinstance(item, str):
            raise InvalidPod(f"metadata.{key}.{name}", f"must be a string, got {v.type_name(item)}")
    return value


def _env_value(container: Mapping[str, Any], name: str) -> str | None:
    for item in container.get("env") or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get("value"), str):
            return str(item["value"])
    return None


# -- annotations (InjectionError) ---------------------------------------------------------------


def _annotation(annotations: Mapping[str, str], name: str, parser: Callable[[str], T]) -> T | None:
    raw = annotations.get(name)
    if raw is None:
        return None
    try:
        return parser(raw)
    except ValueError as exc:
        raise InjectionError(annotation=name, value=raw, problem=str(exc)) from None


def _reject_unsupported(annotations: Mapping[str, str]) -> None:
    for name, value in annotations.items():
        if name.startswith(INJECTION_PREFIXES) and name not in SUPPORTED_ANNOTATIONS:
            raise InjectionError(
                annotation=name,
                value=value,
                problem="this injection annotation is not supported by meshplane; remove it "
                f"(supported: {', '.join(sorted(SUPPORTED_ANNOTATIONS))})",
            )


def _parse_templates(text: str) -> str:
    names = [name.strip() for name in text.split(",")]
    if len(names) != 1:
        raise ValueError(f"give exactly one template: {' or '.join(TEMPLATES)}")
    if names[0] not in TEMPLATES:
        raise ValueError(f"unknown template; use {' or '.join(TEMPLATES)}")
    return names[0]


def _with_image_type(image: str, image_type: str) -> str:
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or "@" in image:
        return image  # no tag to decorate (a digest or an untagged name)
    for known in ("distroless", "debug"):
        tag = tag.removesuffix(f"-{known}")
    return f"{repo}:{tag}" if image_type == "default" else f"{repo}:{tag}-{image_type}"


def _resources(annotations: Mapping[str, str], config: InjectionConfig) -> dict[str, Any]:
    """Istio's rule: any resource annotation replaces the configured resources entirely."""
    amounts: dict[str, Decimal] = {}
    for name in (A_CPU, A_MEMORY, A_CPU_LIMIT, A_MEMORY_LIMIT):
        amount = _annotation(annotations, name, v.parse_quantity)
        if amount is not None:
            amounts[name] = amount
    if not amounts:
        return config.resources.to_dict()
    for request, limit in ((A_CPU, A_CPU_LIMIT), (A_MEMORY, A_MEMORY_LIMIT)):
        if request in amounts and limit in amounts and amounts[request] > amounts[limit]:
            raise InjectionError(
                annotation=request,
                value=annotations[request],
                problem=f"the request exceeds {limit}={json.dumps(annotations[limit])}",
            )
    out: dict[str, Any] = {}
    limits = {res: annotations[a] for res, a in (("cpu", A_CPU_LIMIT), ("memory", A_MEMORY_LIMIT)) if a in amounts}
    requests = {res: annotations[a] for res, a in (("cpu", A_CPU), ("memory", A_MEMORY)) if a in amounts}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _options(annotations: Mapping[str, str], params: InjectionParams) -> _Options:
    config = params.config
    size = annotations_size(annotations)
    if size > MAX_ANNOTATIONS_BYTES:
        raise InvalidPod(
            "metadata.annotations",
            f"{size} bytes in total; Kubernetes allows at most {MAX_ANNOTATIONS_BYTES} (256 KiB): shorten or remove",
        )
    _reject_unsupported(annotations)
    template = _annotation(annotations, A_TEMPLATES, _parse_templates) or config.default_templates[0]
    pod_proxy_config = _annotation(annotations, A_PROXY_CONFIG, v.parse_proxy_config) or {}
    proxy_config = v.merge_proxy_config(
        {"discoveryAddress": params.discovery_address}, config.proxy_config, pod_proxy_config
    )
    interception_annotation = _annotation(annotations, A_INTERCEPTION, v.parse_interception_mode)
    interception = interception_annotation or proxy_config.get("interceptionMode") or config.interception_mode
    if template == "grpc-agent":
        if interception_annotation not in (None, "NONE"):
            raise InjectionError(
                annotation=A_INTERCEPTION,
                value=annotations[A_INTERCEPTION],
                problem="the grpc-agent template (proxyless gRPC) intercepts no traffic; only NONE applies",
            )
        interception = "NONE"
    image_annotation = _annotation(annotations, A_IMAGE, v.parse_image)
    proxy_image, init_image = config.proxy_image, config.proxy_init_image
    image_type = (proxy_config.get("image") or {}).get("imageType")
    if image_type is not None:
        proxy_image = _with_image_type(proxy_image, image_type)
        init_image = _with_image_type(init_image, image_type)
    if image_annotation:
        proxy_image = init_image = image_annotation
    native = _annotation(annotations, A_NATIVE, v.parse_bool)
    rewrite = _annotation(annotations, A_REWRITE, v.parse_bool)
    merge = _annotation(annotations, A_MERGE_METRICS, v.parse_bool)

    def ports(name: str, default: str, *, star: bool) -> str:
        value = _annotation(annotations, name, lambda text: v.parse_port_list(text, allow_star=star))
        return default if value is None else value

    def cidrs(name: str, default: str) -> str:
        value = _annotation(annotations, name, v.parse_cidr_list)
        return default if value is None else value

    return _Options(
        template=template,
        native=config.native_sidecar if native is None else native,
        interception=interception,
        rewrite_probes=config.rewrite_app_probes if rewrite is None else rewrite,
        include_ips=cidrs(A_INCLUDE_IPS, config.include_outbound_ip_ranges),
        exclude_ips=cidrs(A_EXCLUDE_IPS, config.exclude_outbound_ip_ranges),
        include_inbound=ports(A_INCLUDE_INBOUND, config.include_inbound_ports, star=True),
        exclude_inbound=ports(A_EXCLUDE_INBOUND, config.exclude_inbound_ports, star=False),
        include_outbound=ports(A_INCLUDE_OUTBOUND, config.include_outbound_ports, star=False),
        exclude_outbound=ports(A_EXCLUDE_OUTBOUND, config.exclude_outbound_ports, star=False),
        resources=_resources(annotations, config),
        proxy_image=proxy_image,
        init_image=init_image,
        proxy_config=proxy_config,
        log_level=_annotation(annotations, A_LOG_LEVEL, v.parse_log_level) or config.proxy_log_level,
        component_log_level=_annotation(annotations, A_COMPONENT_LOG_LEVEL, v.parse_component_log_level)
        or config.proxy_component_log_level,
        hold=bool(proxy_config.get("holdApplicationUntilProxyStarts", False)),
        status_port=int(proxy_config.get("statusPort", DEFAULT_STATUS_PORT)),
        prometheus_merge=config.enable_prometheus_merge and merge is not False,
    )


# -- workload identity --------------------------------------------------------------------------


def workload_identity(
    pod: Mapping[str, Any], *, namespace: str, params: InjectionParams | None = None
) -> tuple[str, str]:
    """(workload name, owner URI) of a pod, as Istio derives them.

    The params' override wins. Otherwise the controller ownerReference decides: a ReplicaSet named
    `<d>-<pod-template-hash>` is Deployment `<d>`; a Job named `<c>-<8 to 10 digits>` is CronJob
    `<c>`; any other controller is itself. A pod without a controller is its own workload (its
    name, or its generateName without the trailing dash).
    """
    if params is not None and params.workload_name:
        name = params.workload_name
        kind = params.workload_kind or "Pod"
        api_version = params.workload_api_version or "v1"
    else:
        meta = pod.get("metadata") or {}
        refs = meta.get("ownerReferences")
        if refs is not None and not isinstance(refs, list):
            raise InvalidPod("metadata.ownerReferences", f"must be a list, got {v.type_name(refs)}")
        controller = None
        for index, ref in enumerate(refs or []):
            if not isinstance(ref, dict):
                raise InvalidPod(f"metadata.ownerReferences[{index}]", "must be an object")
            if ref.get("controller") is True:
                for key in ("apiVersion", "kind", "name"):
                    if not isinstance(ref.get(key), str) or not ref[key]:
                        raise InvalidPod(f"metadata.ownerReferences[{index}].{key}", "must be a non-empty string")
                controller = ref
                break
        if controller is not None:
            name, kind, api_version = controller["name"], controller["kind"], controller["apiVersion"]
            labels = meta.get("labels") or {}
            template_hash = labels.get("pod-template-hash") if isinstance(labels, dict) else None
            if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
                name, kind, api_version = name[: -len(template_hash) - 1], "Deployment", "apps/v1"
            elif kind == "Job" and (match := _CRONJOB_JOB.match(name)):
                name, kind, api_version = match[1], "CronJob", "batch/v1"
        else:
            raw_name = meta.get("name") or str(meta.get("generateName") or "").removesuffix("-")
            name, kind, api_version = str(raw_name), "Pod", "v1"
    owner = f"kubernetes://apis/{api_version}/namespaces/{namespace}/{kind.lower()}s/{name}"
    return name, owner


# -- strip (undo a previous injection) ----------------------------------------------------------


def _status_list(status: Mapping[str, Any], key: str, raw: str) -> list[str]:
    value = status.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InjectionError(annotation=STATUS, value=raw, problem=f"{key} must be a list of names or null")
    return value


def _remove_named(spec: dict[str, Any], key: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Remove items named in `names` from spec[key]; return the removed ones by name."""
    items = spec.get(key)
    if not names or not isinstance(items, list):
        return {}
    removed = {item["name"]: item for item in items if isinstance(item, dict) and item.get("name") in names}
    if removed:
        kept = [item for item in items if not (isinstance(item, dict) and item.get("name") in names)]
        if kept:
            spec[key] = kept
        else:
            del spec[key]
    return removed


def _strip(pod: dict[str, Any], raw: str) -> None:
    try:
        status = load_json(raw)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise InjectionError(annotation=STATUS, value=raw, problem="must be a JSON object written by injection")
    spec = pod["spec"]
    meta = pod["metadata"]
    annotations: dict[str, str] = meta["annotations"]
    removed = {
        **_remove_named(spec, "initContainers", _status_list(status, "initContainers", raw)),
        **_remove_named(spec, "containers", _status_list(status, "containers", raw)),
    }
    _remove_named(spec, "volumes", _status_list(status, "volumes", raw))
    secrets = _status_list(status, "imagePullSecrets", raw)
    if secrets and isinstance(spec.get("imagePullSecrets"), list):
        kept = [s for s in spec["imagePullSecrets"] if not (isinstance(s, dict) and s.get("name") in secrets)]
        if kept:
            spec["imagePullSecrets"] = kept
        else:
            del spec["imagePullSecrets"]

    overrides = status.get("overrides") or []
    if not isinstance(overrides, list):
        raise InjectionError(annotation=STATUS, value=raw, problem="overrides must be a list")
    for entry in overrides:
        if (
            not isinstance(entry, dict)
            or entry.get("list") not in ("containers", "initContainers")
            or not isinstance(entry.get("index"), int)
            or not isinstance(entry.get("container"), dict)
        ):
            raise InjectionError(annotation=STATUS, value=raw, problem="overrides entries must be list/index/container")
        target = spec.setdefault(entry["list"], [])
        if isinstance(target, list):
            target.insert(min(entry["index"], len(target)), copy.deepcopy(entry["container"]))

    app_changes = status.get("appContainers") or {}
    if not isinstance(app_changes, dict):
        raise InjectionError(annotation=STATUS, value=raw, problem="appContainers must be an object")
    for container in spec.get("containers") or []:
        if not isinstance(container, dict) or container.get("name") not in app_changes:
            continue
        change = app_changes[container["name"]]
        if not isinstance(change, dict):
            raise InjectionError(annotation=STATUS, value=raw, problem="appContainers entries must be objects")
        for key, names in (("env", change.get("env") or []), ("volumeMounts", change.get("volumeMounts") or [])):
            if names and isinstance(container.get(key), list):
                kept = [i for i in container[key] if not (isinstance(i, dict) and i.get("name") in names)]
                if kept:
                    container[key] = kept
                else:
                    del container[key]

    old_proxy = removed.get(PROXY)
    if old_proxy is not None:
        _restore_probes(spec, _env_value(old_proxy, PROBERS_ENV))
        _restore_prometheus(annotations, _env_value(old_proxy, PROMETHEUS_ENV))
    del annotations[STATUS]


def _replace_key(mapping: dict[str, Any], old: str, new: str, value: Any) -> dict[str, Any]:
    """A copy of `mapping` with key `old` replaced by `new` at the same position."""
    return {(new if key == old else key): (value if key == old else item) for key, item in mapping.items()}


def _restore_probes(spec: dict[str, Any], probers_json: str | None) -> None:
    if not probers_json:
        return
    try:
        probers = load_json(probers_json)
    except ValueError:
        probers = None
    if not isinstance(probers, dict):
        raise InvalidPod(f"{PROXY} env {PROBERS_ENV}", "is not the JSON object injection wrote")
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        for field, suffix in _PROBES:
            probe = container.get(field)
            if not isinstance(probe, dict) or not isinstance(probe.get("httpGet"), dict):
                continue
            url = f"/app-health/{container.get('name')}/{suffix}"
            original = probers.get(url)
            if probe["httpGet"].get("path") != url or not isinstance(original, dict):
                continue
            action = next((key for key in _PROBE_ACTIONS if isinstance(original.get(key), dict)), None)
            if action is not None:
                container[field] = _replace_key(probe, "httpGet", action, copy.deepcopy(original[action]))


PROMETHEUS_KEYS = ("scrape", "path", "port")


def _restore_prometheus(annotations: dict[str, str], saved_json: str | None) -> None:
    if not saved_json:
        return
    try:
        saved = load_json(saved_json)
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise InvalidPod(f"{PROXY} env {PROMETHEUS_ENV}", "is not the JSON object injection wrote")
    for key in PROMETHEUS_KEYS:
        value = saved.get(key)
        if isinstance(value, str) and value:
            annotations[f"prometheus.io/{key}"] = value
        else:
            annotations.pop(f"prometheus.io/{key}", None)


# -- probes -------------------------------------------------------------------------------------


def _resolve_port(container: Mapping[str, Any], port: Any, path: str, *, named_ok: bool = True) -> int:
    if isinstance(port, int) and not isinstance(port, bool):
        if not 1 <= port <= 65535:
            raise InvalidPod(path, f"{port} is not a port number 1-65535")
        return port
    if isinstance(port, str) and port and named_ok:
        for item in container.get("ports") or []:
            if isinstance(item, dict) and item.get("name") == port:
                number = item.get("containerPort")
                if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
                    return number
                raise InvalidPod(path, f"named port {port!r} has no valid containerPort")
        raise InvalidPod(path, f"named port {port!r} is not declared in the ports of container {container['name']!r}")
    if port is None:
        raise InvalidPod(path, "is required")
    raise InvalidPod(path, f"must be a port number{' or a port name' if named_ok else ''}, got {json.dumps(port)}")


def _rewrite_probes(apps: list[tuple[int, dict[str, Any]]], status_port: int) -> dict[str, Any]:
    """Point HTTP/TCP/gRPC probes at the agent; return the originals keyed by the new path."""
    probers: dict[str, Any] = {}
    for index, container in apps:
        for field, suffix in _PROBES:
            probe = container.get(field)
            if probe is None:
                continue
            where = f"spec.containers[{index}].{field}"
            if not isinstance(probe, dict):
                raise InvalidPod(where, f"must be an object, got {v.type_name(probe)}")
            action = next((key for key in _PROBE_ACTIONS if key in probe), None)
            if action is None:
                continue  # exec probes stay as they are
            handler = probe[action]
            if not isinstance(handler, dict):
                raise InvalidPod(f"{where}.{action}", f"must be an object, got {v.type_name(handler)}")
            port = _resolve_port(container, handler.get("port"), f"{where}.{action}.port", named_ok=action != "grpc")
            url = f"/app-health/{container['name']}/{suffix}"
            prober: dict[str, Any] = {action: {**handler, "port": port}}
            if "timeoutSeconds" in probe:
                prober["timeoutSeconds"] = probe["timeoutSeconds"]
            probers[url] = prober
            if action == "httpGet":
                http = {key: item for key, item in handler.items() if key != "host"}
                http["path"] = url
                http["port"] = status_port
                if http.get("scheme") == "HTTPS":
                    http["scheme"] = "HTTP"
            else:
                http = {"path": url, "port": status_port}
            container[field] = _replace_key(probe, action, "httpGet", http)
    return probers


# -- the template -------------------------------------------------------------------------------


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _resource_env(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource}}}


def _volumes(template: str) -> list[dict[str, Any]]:
    podinfo = {
        "name": "istio-podinfo",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            ]
        },
    }
    token = {
        "name": "istio-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
            ]
        },
    }
    ca = {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}
    if template == "grpc-agent":
        return [
            {"name": "workload-socket", "emptyDir": {}},
            {"name": "istio-xds", "emptyDir": {"medium": "Memory"}},
            {"name": "istio-data", "emptyDir": {}},
            podinfo,
            token,
            ca,
        ]
    return [
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "credential-socket", "emptyDir": {}},
        {"name": "workload-certs", "emptyDir": {}},
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
        podinfo,
        token,
        ca,
    ]


def _proxy_mounts(template: str) -> list[dict[str, Any]]:
    if template == "grpc-agent":
        pairs = [
            ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
            ("istio-xds", "/etc/istio/proxy"),
            ("istio-data", "/var/lib/istio/data"),
            ("istiod-ca-cert", "/var/run/secrets/istio"),
            ("istio-token", "/var/run/secrets/tokens"),
            ("istio-podinfo", "/etc/istio/pod"),
        ]
    else:
        pairs = [
            ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
            ("credential-socket", "/var/run/secrets/credential-uds"),
            ("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
            ("istiod-ca-cert", "/var/run/secrets/istio"),
            ("istio-data", "/var/lib/istio/data"),
            ("istio-envoy", "/etc/istio/proxy"),
            ("istio-token", "/var/run/secrets/tokens"),
            ("istio-podinfo", "/etc/istio/pod"),
        ]
    return [{"name": name, "mountPath": path} for name, path in pairs]


_GRPC_APP_ENV = (("GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT", "true"), ("GRPC_XDS_BOOTSTRAP", GRPC_BOOTSTRAP))
_GRPC_APP_MOUNTS = (
    ("istio-data", "/var/lib/istio/data"),
    ("istio-xds", "/etc/istio/proxy"),
    ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
)


def _init_container(o: _Options, config: InjectionConfig) -> dict[str, Any]:
    exclude_inbound = ["15090", "15021", str(o.status_port)]
    exclude_inbound += [port for port in o.exclude_inbound.split(",") if port and port not in exclude_inbound]
    args = [
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        str(PROXY_UID),
        "-m",
        o.interception,
        "-i",
        o.include_ips,
        "-x",
        o.exclude_ips,
        "-b",
        o.include_inbound,
        "-d",
        ",".join(exclude_inbound),
    ]
    if o.include_outbound:
        args += ["-q", o.include_outbound]
    if o.exclude_outbound:
        args += ["-o", o.exclude_outbound]
    args.append("--log_output_level=default:info")
    container: dict[str, Any] = {"name": INIT, "image": o.init_image}
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    container["args"] = args
    if o.resources:
        container["resources"] = copy.deepcopy(o.resources)
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": False,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
    }
    return container


def _proxy_container(
    o: _Options,
    params: InjectionParams,
    *,
    labels: Mapping[str, str],
    apps: list[dict[str, Any]],
    workload: tuple[str, str],
) -> dict[str, Any]:
    config = params.config
    grpc = o.template == "grpc-agent"
    trust_domain = config.trust_domain or params.trust_domain
    network = labels.get("topology.istio.io/network") or params.network or config.network
    pod_ports = [port for c in apps for port in c.get("ports") or []]
    env: list[dict[str, Any]] = []
    if grpc:
        env += [
            {"name": "ISTIO_META_GENERATOR", "value": "grpc"},
            {"name": "OUTPUT_CERTS", "value": "/var/lib/istio/data"},
        ]
    env += [
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": params.discovery_address},
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"),
        _resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        {"name": "PROXY_CONFIG", "value": json.dumps(o.proxy_config, sort_keys=True, separators=(",", ":"))},
        {"name": "ISTIO_META_POD_PORTS", "value": json.dumps(pod_ports, separators=(",", ":"))},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(c["name"] for c in apps)},
        _resource_env("GOMEMLIMIT", "limits.memory"),
        _resource_env("GOMAXPROCS", "limits.cpu"),
        {"name": "ISTIO_META_CLUSTER_ID", "value": params.cluster_id},
        _field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": o.interception},
    ]
    if network:
        env.append({"name": "ISTIO_META_NETWORK", "value": network})
    env += [
        {"name": "ISTIO_META_WORKLOAD_NAME", "value": workload[0]},
        {"name": "ISTIO_META_OWNER", "value": workload[1]},
        {"name": "ISTIO_META_MESH_ID", "value": config.mesh_id or trust_domain},
        {"name": "TRUST_DOMAIN", "value": trust_domain},
    ]
    for name, value in sorted((o.proxy_config.get("proxyMetadata") or {}).items()):
        env = [item for item in env if item["name"] != name]
        env.append({"name": name, "value": value})

    container: dict[str, Any] = {"name": PROXY, "image": o.proxy_image}
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    container["args"] = [
        "proxy",
        "sidecar",
        "--domain",
        f"$(POD_NAMESPACE).svc.{CLUSTER_DOMAIN}",
        f"--proxyLogLevel={o.log_level}",
        f"--proxyComponentLogLevel={o.component_log_level}",
        "--log_output_level=default:info",
    ]
    container["env"] = env
    if not grpc:
        container["ports"] = [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]
    ready_port = o.status_port if grpc else 15021
    container["readinessProbe"] = {
        "failureThreshold": 4,
        "httpGet": {"path": "/healthz/ready", "port": ready_port},
        "periodSeconds": 15,
        "timeoutSeconds": 3,
    }
    if o.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {
            "failureThreshold": 600,
            "httpGet": {"path": "/healthz/ready", "port": ready_port},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
        }
    elif o.hold:
        container["lifecycle"] = {"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}}
    if o.resources:
        container["resources"] = copy.deepcopy(o.resources)
    tproxy = o.interception == "TPROXY"
    capabilities: dict[str, Any] = {"add": ["NET_ADMIN"], "drop": ["ALL"]} if tproxy else {"drop": ["ALL"]}
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": capabilities,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": not tproxy,
        "runAsUser": 0 if tproxy else PROXY_UID,
    }
    container["volumeMounts"] = _proxy_mounts(o.template)
    return container


# -- user overrides -----------------------------------------------------------------------------

_MERGE_KEYS = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath"}


def _merge_dict(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dict(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_container(base: dict[str, Any], override: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        merge_key = _MERGE_KEYS.get(key)
        if merge_key is not None and isinstance(out.get(key), list):
            items = _objects(override, key, f"{where}.{key}")
            merged = list(out[key])
            for item in items:
                position = next((i for i, m in enumerate(merged) if m.get(merge_key) == item.get(merge_key)), None)
                if position is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[position] = copy.deepcopy(item)
            out[key] = merged
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dict(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- inject -------------------------------------------------------------------------------------


def _status_json(status: dict[str, Any]) -> str:
    return json.dumps(status, separators=(",", ":"))


def inject_pod(pod: dict[str, Any], params: InjectionParams) -> dict[str, Any]:
    """Return `pod` with the sidecar injected (mutating and returning the argument).

    Raises `InjectionError` for an invalid or unsupported injection annotation and `InvalidPod`
    for a structurally malformed pod. Does not consult the injection policy: call
    `webhook.policy.injection_required` first.
    """
    if not isinstance(pod, dict):
        raise InvalidPod("(pod)", f"must be an object, got {v.type_name(pod)}")
    meta = _object(pod, "metadata", "metadata", create=True)
    spec = _object(pod, "spec", "spec")
    assert meta is not None
    if spec is None:
        raise InvalidPod("spec", "is required")
    labels = _string_map(meta, "labels")
    annotations = _string_map(meta, "annotations")
    for key in ("containers", "initContainers"):
        _objects(spec, key, f"spec.{key}", named=True)
    _objects(spec, "volumes", "spec.volumes", named=True)
    _objects(spec, "imagePullSecrets", "spec.imagePullSecrets")

    if STATUS in annotations:
        _strip(pod, annotations[STATUS])
    o = _options(annotations, params)
    config = params.config

    # Take out the user's overrides of the containers injection adds.
    injected_names = [PROXY] if o.interception == "NONE" else [INIT, PROXY]
    overrides: list[dict[str, Any]] = []
    override_for: dict[str, dict[str, Any]] = {}
    for list_key in ("initContainers", "containers"):
        items = spec.get(list_key) or []
        for index in range(len(items) - 1, -1, -1):
            name = items[index]["name"]
            if name in injected_names:
                if name in override_for:
                    raise InvalidPod(f"spec.{list_key}[{index}].name", f"container {name!r} appears twice")
                override_for[name] = items[index]
                overrides.append({"list": list_key, "index": index, "container": items.pop(index)})
    overrides.sort(key=lambda entry: (entry["list"] != "initContainers", entry["index"]))

    containers: list[dict[str, Any]] = spec.get("containers") or []
    if not containers:
        raise InvalidPod("spec.containers", "needs at least one application container")
    for index, container in enumerate(containers):
        _objects(container, "env", f"spec.containers[{index}].env", named=True)
        _objects(container, "ports", f"spec.containers[{index}].ports")
        _objects(container, "volumeMounts", f"spec.containers[{index}].volumeMounts", named=True)
    indexed_apps = list(enumerate(containers))
    workload = workload_identity(pod, namespace=params.namespace, params=params)

    proxy = _proxy_container(o, params, labels=labels, apps=containers, workload=workload)
    if o.rewrite_probes:
        probers = _rewrite_probes(indexed_apps, o.status_port)
        if probers:
            value = json.dumps(probers, sort_keys=True, separators=(",", ":"))
            proxy["env"].append({"name": PROBERS_ENV, "value": value})
    if o.prometheus_merge and annotations.get("prometheus.io/scrape") != "false":
        target = str(o.status_port)
        if annotations.get("prometheus.io/port") != target:
            saved = {key: annotations.get(f"prometheus.io/{key}", "") for key in PROMETHEUS_KEYS}
            proxy["env"].append({"name": PROMETHEUS_ENV, "value": json.dumps(saved, separators=(",", ":"))})
            annotations["prometheus.io/port"] = target
            annotations["prometheus.io/path"] = "/stats/prometheus"
            annotations["prometheus.io/scrape"] = "true"

    app_changes: dict[str, Any] = {}
    if o.template == "grpc-agent":
        for container in containers:
            added: dict[str, list[str]] = {"env": [], "volumeMounts": []}
            env = container.setdefault("env", [])
            for name, value in _GRPC_APP_ENV:
                if all(item["name"] != name for item in env):
                    env.append({"name": name, "value": value})
                    added["env"].append(name)
            mounts = container.setdefault("volumeMounts", [])
            for name, path in _GRPC_APP_MOUNTS:
                if all(item["name"] != name and item.get("mountPath") != path for item in mounts):
                    mounts.append({"name": name, "mountPath": path})
                    added["volumeMounts"].append(name)
            for key in ("env", "volumeMounts"):
                if not container[key]:
                    del container[key]
            if added["env"] or added["volumeMounts"]:
                app_changes[container["name"]] = added

    init = None if o.interception == "NONE" else _init_container(o, config)
    if init is not None and INIT in override_for:
        init = _merge_container(init, override_for[INIT], f"{INIT} override")
    if PROXY in override_for:
        proxy = _merge_container(proxy, override_for[PROXY], f"{PROXY} override")
    if o.native and "restartPolicy" not in proxy:
        proxy["restartPolicy"] = "Always"

    front = ([init] if init is not None else []) + ([proxy] if o.native else [])
    if front:
        spec["initContainers"] = front + (spec.get("initContainers") or [])
    if not o.native:
        spec["containers"] = [proxy, *containers] if o.hold else [*containers, proxy]

    volumes = spec.get("volumes") or []
    present = {volume["name"] for volume in volumes}
    added_volumes = [volume for volume in _volumes(o.template) if volume["name"] not in present]
    spec["volumes"] = volumes + added_volumes
    added_secrets: list[str] = []
    if config.image_pull_secrets:
        secrets = spec.get("imagePullSecrets") or []
        have = {item.get("name") for item in secrets}
        added_secrets = [name for name in config.image_pull_secrets if name not in have]
        spec["imagePullSecrets"] = secrets + [{"name": name} for name in added_secrets]

    labels.setdefault("security.istio.io/tlsMode", "istio")
    labels["service.istio.io/canonical-name"] = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload[0]
    )
    labels["service.istio.io/canonical-revision"] = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    for key, value in config.injected_annotations.items():
        annotations[key] = value
    annotations["istio.io/rev"] = params.revision
    annotations.setdefault("kubectl.kubernetes.io/default-logs-container", containers[0]["name"])
    annotations.setdefault("kubectl.kubernetes.io/default-container", containers[0]["name"])

    status: dict[str, Any] = {
        "initContainers": [c["name"] for c in front] or None,
        "containers": None if o.native else [PROXY],
        "volumes": [volume["name"] for volume in added_volumes] or None,
        "imagePullSecrets": added_secrets or None,
        "revision": params.revision,
    }
    if overrides:
        status["overrides"] = overrides
    if app_changes:
        status["appContainers"] = app_changes
    annotations[STATUS] = _status_json(status)
    return pod
