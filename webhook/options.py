"""The injection settings of one pod: the config's defaults overridden by the pod's annotations.

`read_options()` validates every injection annotation (Istio's names) and returns `Options`, which
templates see as `sidecar` (see `Options.context`). An invalid value raises `InjectionError` naming
the annotation, the value and what is accepted; an annotation under Istio's injection prefixes that
meshplane does not implement is rejected the same way rather than ignored; annotations larger than
Kubernetes allows raise `InvalidPod`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from webhook import validate as v
from webhook.config import InjectionConfig
from webhook.limits import MAX_ANNOTATIONS_BYTES, annotations_size
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
    status_port: int
    prometheus_merge: bool

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

    return Options(
        templates=templates,
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
