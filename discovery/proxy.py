"""A connected proxy, parsed from the `node` of its first discovery request.

Node ids follow Istio: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`, with type
`sidecar` or `router`. Node metadata (a protobuf Struct) carries Istio's keys: `NAMESPACE`,
`LABELS`, `SERVICE_ACCOUNT`, `INSTANCE_IPS`, `INTERCEPTION_MODE`, `ISTIO_VERSION`, `CLUSTER_ID`,
`GENERATOR` (`grpc` for proxyless gRPC clients), and meshplane's own `LOOPBACK_ADDRESS` (the
proxy's loopback address, default 127.0.0.1: several proxies on one machine each get their own,
as each pod has its own 127.0.0.1). Metadata wins over what the id implies.

Names follow Kubernetes' rules (`controlplane.model.names`): the pod name is a DNS-1123 subdomain,
the namespace a DNS-1123 label, `SERVICE_ACCOUNT` (when given) a DNS-1123 subdomain. As a namespace
holds no dots, the id's workload part splits at its last dot.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format

from controlplane import literals
from controlplane.model import names
from controlplane.model.fields import EMPTY_LABELS, ObjectError, empty_labels

DEFAULT_LOOPBACK = "127.0.0.1"
MAX_INSTANCE_IPS = 64


class NodeError(ValueError):
    """The node is missing or malformed; the message names the part that is wrong."""


class InterceptionMode(enum.Enum):
    REDIRECT = "REDIRECT"
    TPROXY = "TPROXY"
    NONE = "NONE"


@dataclass(frozen=True, kw_only=True)
class Proxy:
    id: str
    type: str
    ip_addresses: tuple[str, ...]
    pod_name: str
    namespace: str
    dns_domain: str
    labels: Mapping[str, str] = field(default_factory=empty_labels)
    service_account: str = ""
    interception_mode: InterceptionMode = InterceptionMode.REDIRECT
    generator: str = ""
    istio_version: str = ""
    cluster_id: str = ""
    loopback: str = DEFAULT_LOOPBACK  # with interception NONE: where outbound listeners bind and the app listens
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def name(self) -> str:
        """`<pod>.<namespace>`, the name proxy-status and config_dump use."""
        return f"{self.pod_name}.{self.namespace}"

    @property
    def ip(self) -> str:
        return self.ip_addresses[0]

    @property
    def proxyless(self) -> bool:
        return self.generator == "grpc"

    @property
    def router(self) -> bool:
        """A gateway pod (node type `router`, pilot-agent's `proxy router`)."""
        return self.type == "router"


def parse_node(node: Any) -> Proxy:
    """Parse an `envoy.config.core.v3.Node`. Raises `NodeError` naming the bad part."""
    if node is None or not node.id:
        raise NodeError("node.id is required in the first request of a stream")
    parts = node.id.split("~")
    if len(parts) != 4:
        raise NodeError(f"node.id {node.id!r} is not <type>~<ip>~<pod>.<namespace>~<domain>")
    node_type, ip_text, pod_id, domain = parts
    if node_type not in ("sidecar", "router"):
        raise NodeError(f"node.id type {node_type!r} is not sidecar or router")
    ip = _address(ip_text, f"node.id address {ip_text!r}")
    pod_name, dot, id_namespace = pod_id.rpartition(".")
    if not pod_name or not dot or not id_namespace:
        raise NodeError(f"node.id workload {pod_id!r} is not <pod>.<namespace>")
    metadata: dict[str, Any] = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    _name(names.dns1123_subdomain, pod_name, "node.id pod name")
    _name(names.namespace_name, id_namespace, "node.id namespace")
    namespace = _name(names.namespace_name, _text(metadata, "NAMESPACE") or id_namespace, "node.metadata.NAMESPACE")
    service_account = _text(metadata, "SERVICE_ACCOUNT")
    if service_account:
        _name(names.service_account_name, service_account, "node.metadata.SERVICE_ACCOUNT")
    raw_labels = metadata.get("LABELS") or {}
    if not isinstance(raw_labels, Mapping):
        raise NodeError("node.metadata.LABELS must be a map of strings")
    ips = [ip]
    seen = {ip}
    extras = [extra for extra in (_text(metadata, "INSTANCE_IPS") or "").split(",") if extra]
    if len(extras) > MAX_INSTANCE_IPS:
        raise NodeError(
            f"node.metadata.INSTANCE_IPS lists {len(extras)} addresses; at most {MAX_INSTANCE_IPS} are allowed"
        )
    for extra in extras:
        canonical = _address(extra.strip(), f"node.metadata.INSTANCE_IPS: {extra!r}")
        if canonical not in seen:
            seen.add(canonical)
            ips.append(canonical)
    mode_text = _text(metadata, "INTERCEPTION_MODE") or "REDIRECT"
    try:
        mode = InterceptionMode(mode_text)
    except ValueError:
        raise NodeError(f"node.metadata.INTERCEPTION_MODE {mode_text!r} is not REDIRECT, TPROXY or NONE") from None
    if mode is InterceptionMode.TPROXY and node_type == "sidecar":  # a router captures nothing: any mode does
        raise NodeError(
            "node.metadata.INTERCEPTION_MODE 'TPROXY' is not supported for a sidecar: meshplane's inbound "
            "listeners are not transparent and its istio-init installs REDIRECT rules only; use REDIRECT or NONE"
        )
    loopback_text = _text(metadata, "LOOPBACK_ADDRESS") or DEFAULT_LOOPBACK
    loopback = _address(
        loopback_text,
        f"node.metadata.LOOPBACK_ADDRESS {loopback_text!r}",
        kind="an IPv4 or IPv6 address",
        hint="; set it to the proxy's loopback address (such as 127.0.0.1) or leave it out",
    )
    return Proxy(
        id=node.id,
        type=node_type,
        ip_addresses=tuple(ips),
        pod_name=pod_name,
        namespace=namespace,
        dns_domain=domain,
        labels=MappingProxyType({str(k): str(v) for k, v in raw_labels.items()}) if raw_labels else EMPTY_LABELS,
        service_account=service_account,
        interception_mode=mode,
        generator=_text(metadata, "GENERATOR"),
        istio_version=_text(metadata, "ISTIO_VERSION"),
        cluster_id=_text(metadata, "CLUSTER_ID") or node.cluster,
        loopback=loopback,
        metadata=MappingProxyType(metadata),
    )


def _name(rule: Callable[..., str], value: str, field: str) -> str:
    try:
        return rule(value, field=field)
    except ObjectError as exc:
        raise NodeError(str(exc)) from None


def _address(text: str, what: str, *, kind: str = "an IP address", hint: str = "") -> str:
    """An IPv4 or IPv6 address in canonical form, without a zone (`%eth0`): Envoy refuses a zone naming
    an interface its machine lacks, and the proxy's addresses go into its own listeners and clusters."""
    try:
        return str(literals.ip_address(text))
    except literals.ZoneError:
        raise NodeError(f"{what} is not {kind}: {literals.NO_ZONE}{hint}") from None
    except ValueError:
        raise NodeError(f"{what} is not {kind}{hint}") from None


def _text(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise NodeError(f"node.metadata.{key} must be a string")
    return value
