"""The injection settings of one pod: the config's defaults overridden by the pod's annotations.

`read_options()` validates every injection annotation (Istio's names) and returns `Options`, which
templates see as `sidecar` (see `Options.context`). An invalid value raises `InjectionError` naming
the annotation, the value and what is accepted; an annotation under Istio's injection prefixes that
meshplane does not implement is rejected the same way rather than ignored; annotations larger than
Kubernetes allows raise `InvalidPod`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from controlplane.agent.appmetrics import ScrapeTarget, parse_scrape_targets
from controlplane.iptables.rules import OptionError, parse_options
from controlplane.jsontext import load_json
from controlplane.literals import INT32_MAX, natural
from webhook import validate as v
from webhook.config import InjectionConfig
from webhook.limits import MAX_ANNOTATIONS_BYTES, MAX_VALUE_DEPTH, annotations_size
from webhook.validate import InjectionError, InvalidPod

T = TypeVar("T")

PROXY_UID = 1337
DEFAULT_STATUS_PORT = 15020
CLUSTER_DOMAIN = "cluster.local"
STATUS = "sidecar.istio.io/status"
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
A_STATUS_PORT = "status.sidecar.istio.io/port"
A_READINESS = "readiness.status.sidecar.istio.io/"
A_APPLICATION_PORTS = A_READINESS + "applicationPorts"  # Istio's, deprecated: checked, no effect
A_USER_VOLUME = "sidecar.istio.io/userVolume"
A_USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"
A_KUBEVIRT = "traffic.sidecar.istio.io/kubevirtInterfaces"
A_REROUTE = "istio.io/reroute-virtual-interfaces"
A_SCRAPE_TARGETS = "prometheus.istio.io/scrape-targets"
A_OVERRIDES = "proxy.istio.io/overrides"
# readiness.status.sidecar.istio.io/<field> -> the least value Kubernetes accepts for the proxy's readinessProbe
READINESS_FIELDS = {"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 1}
# The istio-init flag each traffic annotation becomes, by the field name `controlplane.iptables` validates it as.
IPTABLES_FIELDS = {
    "traffic.sidecar.istio.io/includeOutboundIPRanges": "include_ranges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges": "exclude_ranges",
    "traffic.sidecar.istio.io/includeInboundPorts": "inbound_ports",
    "traffic.sidecar.istio.io/excludeInboundPorts": "inbound_exclude_ports",
    "traffic.sidecar.istio.io/includeOutboundPorts": "outbound_include_ports",
    "traffic.sidecar.istio.io/excludeOutboundPorts": "outbound_exclude_ports",
}

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
        A_STATUS_PORT,
        *(A_READINESS + name for name in READINESS_FIELDS),
        A_APPLICATION_PORTS,
        A_USER_VOLUME,
        A_USER_VOLUME_MOUNT,
        A_KUBEVIRT,
        A_REROUTE,
        A_SCRAPE_TARGETS,
        A_OVERRIDES,
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


@dataclass(frozen=True, kw_only=True)
class Options:
    """The effective settings for one pod (config defaults, then annotations)."""

    templates: tuple[str, ...]
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
    status_port: int  # 0: the proxy serves no status (no proxy probes, no probe rewriting, no metrics merge)
    prometheus_merge: bool
    scrape_targets: tuple[ScrapeTarget, ...]  # prometheus.istio.io/scrape-targets, in merge order
    readiness: dict[str, int]  # readinessProbe fields the pod's annotations set
    user_volumes: dict[str, Any]  # name -> volume source, added to the pod
    user_volume_mounts: dict[str, Any]  # name -> mount, added to istio-proxy
    virtual_interfaces: str  # istio-init -k: interfaces whose traffic is redirected like the pod's

    def context(self, *, config: InjectionConfig, discovery_address: str, trust_domain: str) -> dict[str, Any]:
        """What templates see as `sidecar` (pod-specific values are added by the caller)."""
        return {
            "image": self.proxy_image,
            "init_image": self.init_image,
            "image_pull_policy": config.image_pull_policy,
            "interception": self.interception,
            "native": self.native,
            "hold": self.hold,
            "status_port": self.status_port,
            "proxy_uid": PROXY_UID,
            "proxy_gid": PROXY_UID,
            "readiness": self.readiness,
            "user_volumes": self.user_volumes,
            "user_volume_mounts": self.user_volume_mounts,
            "virtual_interfaces": self.virtual_interfaces,
            "include_ips": self.include_ips,
            "exclude_ips": self.exclude_ips,
            "include_inbound": self.include_inbound,
            "exclude_inbound": self.exclude_inbound,
            "include_outbound": self.include_outbound,
            "exclude_outbound": self.exclude_outbound,
            "resources": self.resources,
            "log_level": self.log_level,
            "component_log_level": self.component_log_level,
            "ca_address": discovery_address,
            "trust_domain": trust_domain,
            "mesh_id": config.mesh_id or trust_domain,
            "cluster_domain": CLUSTER_DOMAIN,
        }


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


_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def _parse_status_port(text: str) -> int:
    port = natural(text.strip())
    if port is None or port > 65535:
        raise ValueError("must be a port number 1-65535, or 0 for no status port")
    return port


def _parse_count(minimum: int) -> Callable[[str], int]:
    """A readiness probe count: the proxy's probe fields are int32, which the API server cannot decode past."""

    def parse(text: str) -> int:
        count = natural(text.strip())
        if count is None or not minimum <= count <= INT32_MAX:
            raise ValueError(f"must be a whole number from {minimum} to {INT32_MAX}")
        return count

    return parse


def _parse_named_objects(required: str | None) -> Callable[[str], dict[str, Any]]:
    """A JSON object of name -> object (Istio's userVolume/userVolumeMount), each with `required` if given."""

    def parse(text: str) -> dict[str, Any]:
        try:
            document = load_json(text, max_depth=MAX_VALUE_DEPTH)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise ValueError('must be a JSON object of name to definition, e.g. {"certs": {...}}')
        for name, item in document.items():
            if not name:
                raise ValueError("a name is empty")
            if not isinstance(item, dict):
                raise ValueError(f"{name}: must be an object, got {v.type_name(item)}")
            if "name" in item:
                raise ValueError(f"{name}: leave name out; the key is the name")
            if required is not None and not (isinstance(item.get(required), str) and item[required]):
                raise ValueError(f"{name}: {required} is required and must be a non-empty string")
        return document

    return parse


def _parse_interfaces(text: str) -> str:
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not _INTERFACE.fullmatch(item):
            raise ValueError(f"{item!r} is not a network interface name (1-15 letters, digits, . _ - : @)")
    return ",".join(items)


def _check_iptables(annotations: Mapping[str, str], values: Mapping[str, str]) -> None:
    """Refuse a traffic annotation whose value the pod's istio-init (`istio-iptables`) would refuse."""
    for name, field_name in IPTABLES_FIELDS.items():
        if name in annotations:
            try:
                parse_options(**{field_name: values[name]})
            except OptionError as exc:
                raise InjectionError(
                    annotation=name, value=annotations[name], problem=f"istio-init would refuse it ({exc})"
                ) from None


def parse_template_names(text: str, known: list[str]) -> tuple[str, ...]:
    """`a,b` -> ("a", "b"): each a known template, none twice. Raises `ValueError`."""
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in known:
            raise ValueError(f"unknown template {name!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError("a template is listed twice")
    return names


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


def read_options(annotations: Mapping[str, str], *, config: InjectionConfig, discovery_address: str) -> Options:
    """The effective settings for a pod with these annotations (see the module doc for errors)."""
    size = annotations_size(annotations)
    if size > MAX_ANNOTATIONS_BYTES:
        raise InvalidPod(
            "metadata.annotations",
            f"{size} bytes in total; Kubernetes allows at most {MAX_ANNOTATIONS_BYTES} (256 KiB): shorten or remove",
        )
    _reject_unsupported(annotations)
    known = config.templates.names
    templates = _annotation(annotations, A_TEMPLATES, lambda text: parse_template_names(text, known))
    templates = templates or config.default_templates
    pod_proxy_config = _annotation(annotations, A_PROXY_CONFIG, v.parse_proxy_config) or {}
    proxy_config = v.merge_proxy_config({"discoveryAddress": discovery_address}, config.proxy_config, pod_proxy_config)
    interception_annotation = _annotation(annotations, A_INTERCEPTION, v.parse_interception_mode)
    interception = interception_annotation or proxy_config.get("interceptionMode") or config.interception_mode
    if "grpc-agent" in templates:
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

    traffic = {
        A_INCLUDE_IPS: cidrs(A_INCLUDE_IPS, config.include_outbound_ip_ranges),
        A_EXCLUDE_IPS: cidrs(A_EXCLUDE_IPS, config.exclude_outbound_ip_ranges),
        A_INCLUDE_INBOUND: ports(A_INCLUDE_INBOUND, config.include_inbound_ports, star=True),
        A_EXCLUDE_INBOUND: ports(A_EXCLUDE_INBOUND, config.exclude_inbound_ports, star=False),
        A_INCLUDE_OUTBOUND: ports(A_INCLUDE_OUTBOUND, config.include_outbound_ports, star=False),
        A_EXCLUDE_OUTBOUND: ports(A_EXCLUDE_OUTBOUND, config.exclude_outbound_ports, star=False),
    }
    _check_iptables(annotations, traffic)
    status_port = _annotation(annotations, A_STATUS_PORT, _parse_status_port)
    if status_port:
        proxy_config = {**proxy_config, "statusPort": status_port}
    readiness: dict[str, int] = {}
    for field_name, minimum in READINESS_FIELDS.items():
        value = _annotation(annotations, A_READINESS + field_name, _parse_count(minimum))
        if value is not None:
            readiness[field_name] = value
    interfaces = _annotation(annotations, A_REROUTE, _parse_interfaces)
    if interfaces is None:
        interfaces = _annotation(annotations, A_KUBEVIRT, _parse_interfaces)
    effective_status_port = int(proxy_config.get("statusPort", DEFAULT_STATUS_PORT)) if status_port != 0 else 0
    scrape_targets = _annotation(
        annotations, A_SCRAPE_TARGETS, lambda text: parse_scrape_targets(text, status_port=effective_status_port)
    )
    _annotation(annotations, A_OVERRIDES, parse_override_containers)
    _annotation(annotations, A_APPLICATION_PORTS, lambda text: v.parse_port_list(text, allow_star=False))

    return Options(
        templates=templates,
        native=config.native_sidecar if native is None else native,
        interception=interception,
        # grpc-agent: Istio's template turns rewriting off (gRPC serves its own health)
        rewrite_probes=(config.rewrite_app_probes if rewrite is None else rewrite) and "grpc-agent" not in templates,
        include_ips=traffic[A_INCLUDE_IPS],
        exclude_ips=traffic[A_EXCLUDE_IPS],
        include_inbound=traffic[A_INCLUDE_INBOUND],
        exclude_inbound=traffic[A_EXCLUDE_INBOUND],
        include_outbound=traffic[A_INCLUDE_OUTBOUND],
        exclude_outbound=traffic[A_EXCLUDE_OUTBOUND],
        resources=_resources(annotations, config),
        proxy_image=proxy_image,
        init_image=init_image,
        proxy_config=proxy_config,
        log_level=_annotation(annotations, A_LOG_LEVEL, v.parse_log_level) or config.proxy_log_level,
        component_log_level=_annotation(annotations, A_COMPONENT_LOG_LEVEL, v.parse_component_log_level)
        or config.proxy_component_log_level,
        hold=bool(proxy_config.get("holdApplicationUntilProxyStarts", False)),
        status_port=effective_status_port,
        prometheus_merge=config.enable_prometheus_merge and merge is not False and status_port != 0,
        scrape_targets=scrape_targets or (),
        readiness=readiness,
        user_volumes=_annotation(annotations, A_USER_VOLUME, _parse_named_objects(None)) or {},
        user_volume_mounts=_annotation(annotations, A_USER_VOLUME_MOUNT, _parse_named_objects("mountPath")) or {},
        virtual_interfaces=interfaces or "",
    )


def parse_override_containers(text: str) -> dict[str, list[dict[str, Any]]]:
    """Istio's `proxy.istio.io/overrides`: `{"containers": [...], "initContainers": [...]}`, each named.

    Istio writes it on a pod whose own `istio-proxy`/`istio-init` customised the injected one, so
    that re-injection can apply the customisation again. Raises `ValueError` naming what is wrong.
    """
    try:
        document = load_json(text, max_depth=MAX_VALUE_DEPTH)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object with containers and/or initContainers")
    out: dict[str, list[dict[str, Any]]] = {}
    for key in ("containers", "initContainers"):
        items = document.get(key) or []
        if not isinstance(items, list):
            raise ValueError(f"{key} must be a list of containers")
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
                raise ValueError(f"{key}[{index}] must be a container object with a name")
        out[key] = items
    return out
