"""The injection configuration: what the template needs besides the pod.

`InjectionConfig` holds defaults for everything, so a control plane without ConfigMaps injects
Istio's stock sidecar (`docker.io/istio/proxyv2:1.28.0`, native sidecar, REDIRECT, probe rewrite).
`webhook.configparse` reads it from the ConfigMaps, `webhook.configwatch` keeps it current.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.model.meshconfig import Requirement
from webhook.templates import TemplateSet

log = logging.getLogger(__name__)


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


DEFAULT_HUB = "docker.io/istio"
DEFAULT_TAG = "1.28.0"
DEFAULT_IMAGE_NAME = "proxyv2"
POLICIES = ("enabled", "disabled")


class ConfigError(ValueError):
    """An injector or mesh ConfigMap has content injection cannot use.

    `key` is the ConfigMap data key (`config`, `values`, `mesh`), `field` the dotted path inside it
    ("" for the key as a whole), `problem` what is wrong.
    """

    def __init__(self, *, key: str, field: str, problem: str) -> None:
        where = f"key {key!r}" + (f", field {field}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.key = key
        self.field = field
        self.problem = problem


# -- model -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LabelSelector:
    """A Kubernetes LabelSelector. Never empty: the parser rejects a selector without terms."""

    match_labels: Mapping[str, str] = field(default_factory=_empty)
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        return all(req.matches(labels) for req in self.match_expressions)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": sorted(r.values)} if r.values else {})}
                for r in self.match_expressions
            ]
        return out


@dataclass(frozen=True, kw_only=True)
class Resources:
    """Container resources as Kubernetes writes them: resource name -> quantity string."""

    requests: Mapping[str, str] = field(default_factory=_empty)
    limits: Mapping[str, str] = field(default_factory=_empty)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.requests:
            out["requests"] = dict(self.requests)
        return out


DEFAULT_RESOURCES = Resources(
    requests=MappingProxyType({"cpu": "100m", "memory": "128Mi"}),
    limits=MappingProxyType({"cpu": "2000m", "memory": "1024Mi"}),
)


def image_ref(hub: str, name: str, tag: str) -> str:
    return name if "/" in name else f"{hub}/{name}:{tag}"


@dataclass(frozen=True, kw_only=True)
class InjectionConfig:
    """Everything injection needs besides the pod and the control plane's identity. Read-only.

    Empty strings mean "not set": `mesh_id` falls back to the trust domain, `trust_domain` to the
    control plane's `--trust-domain`, `network` to the webhook path's network.
    """

    policy: str = "enabled"
    never_inject_selector: tuple[LabelSelector, ...] = ()
    always_inject_selector: tuple[LabelSelector, ...] = ()
    default_templates: tuple[str, ...] = ("sidecar",)
    injected_annotations: Mapping[str, str] = field(default_factory=_empty)
    hub: str = DEFAULT_HUB
    tag: str = DEFAULT_TAG
    proxy_image: str = image_ref(DEFAULT_HUB, DEFAULT_IMAGE_NAME, DEFAULT_TAG)
    proxy_init_image: str = image_ref(DEFAULT_HUB, DEFAULT_IMAGE_NAME, DEFAULT_TAG)
    image_pull_policy: str = ""  # "" leaves it to Kubernetes
    image_pull_secrets: tuple[str, ...] = ()
    resources: Resources = DEFAULT_RESOURCES
    native_sidecar: bool = True
    interception_mode: str = "REDIRECT"
    rewrite_app_probes: bool = True
    include_outbound_ip_ranges: str = "*"
    exclude_outbound_ip_ranges: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""
    include_outbound_ports: str = ""
    exclude_outbound_ports: str = ""
    mesh_id: str = ""
    network: str = ""
    trust_domain: str = ""
    proxy_log_level: str = "warning"
    proxy_component_log_level: str = "misc:error"
    enable_prometheus_merge: bool = True
    proxy_config: Mapping[str, Any] = field(default_factory=_empty)  # mesh defaultConfig (ProxyConfig JSON)
    templates: TemplateSet = field(default_factory=TemplateSet.builtin)

    @functools.cached_property
    def template_inputs(self) -> dict[str, Any]:
        """`values` and `mesh_config` as templates see them; built once per config, never per pod."""
        return {
            "values": {
                "global": {
                    "hub": self.hub,
                    "tag": self.tag,
                    "imagePullPolicy": self.image_pull_policy,
                    "imagePullSecrets": list(self.image_pull_secrets),
                    "meshID": self.mesh_id,
                    "network": self.network,
                    "proxy": {
                        "image": self.proxy_image,
                        "resources": self.resources.to_dict(),
                        "includeIPRanges": self.include_outbound_ip_ranges,
                        "excludeIPRanges": self.exclude_outbound_ip_ranges,
                        "includeInboundPorts": self.include_inbound_ports,
                        "excludeInboundPorts": self.exclude_inbound_ports,
                        "includeOutboundPorts": self.include_outbound_ports,
                        "excludeOutboundPorts": self.exclude_outbound_ports,
                        "logLevel": self.proxy_log_level,
                        "componentLogLevel": self.proxy_component_log_level,
                        "interceptionMode": self.interception_mode,
                    },
                    "proxy_init": {"image": self.proxy_init_image},
                },
                "sidecarInjectorWebhook": {
                    "nativeSidecar": self.native_sidecar,
                    "rewriteAppHTTPProbe": self.rewrite_app_probes,
                },
            },
            "mesh_config": {
                "trustDomain": self.trust_domain,
                "enablePrometheusMerge": self.enable_prometheus_merge,
                "defaultConfig": dict(self.proxy_config),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for /debug/injectz)."""
        return {
            "policy": self.policy,
            "neverInjectSelector": [s.to_dict() for s in self.never_inject_selector],
            "alwaysInjectSelector": [s.to_dict() for s in self.always_inject_selector],
            "defaultTemplates": list(self.default_templates),
            "injectedAnnotations": dict(self.injected_annotations),
            "proxyImage": self.proxy_image,
            "proxyInitImage": self.proxy_init_image,
            "imagePullPolicy": self.image_pull_policy,
            "imagePullSecrets": list(self.image_pull_secrets),
            "resources": self.resources.to_dict(),
            "nativeSidecar": self.native_sidecar,
            "interceptionMode": self.interception_mode,
            "rewriteAppHTTPProbe": self.rewrite_app_probes,
            "includeOutboundIPRanges": self.include_outbound_ip_ranges,
            "excludeOutboundIPRanges": self.exclude_outbound_ip_ranges,
            "includeInboundPorts": self.include_inbound_ports,
            "excludeInboundPorts": self.exclude_inbound_ports,
            "includeOutboundPorts": self.include_outbound_ports,
            "excludeOutboundPorts": self.exclude_outbound_ports,
            "meshID": self.mesh_id,
            "network": self.network,
            "trustDomain": self.trust_domain,
            "proxyLogLevel": self.proxy_log_level,
            "proxyComponentLogLevel": self.proxy_component_log_level,
            "enablePrometheusMerge": self.enable_prometheus_merge,
            "defaultConfig": dict(self.proxy_config),
            "templates": self.templates.names,
        }
