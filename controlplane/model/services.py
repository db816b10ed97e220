"""Services: Kubernetes `Service` objects as the mesh sees them.

A service is known by its hostname `<name>.<namespace>.svc.<domain>`. Each port carries the
application protocol the proxies use for it, decided as Istio does: the port's `appProtocol`
first, then the port name's prefix (`http`, `http-web`, `grpc-api`, ...), else "unsupported",
which meshplane proxies as opaque TCP (Istio would sniff; meshplane does not).

`ExternalName` services have no endpoints in the mesh and are skipped by the generators; headless
services (`clusterIP: None`, or no `clusterIP` in a local config file) get clusters and HTTP
routes but no per-address TCP listener.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import fields as f

DEFAULT_DOMAIN = "cluster.local"


class Protocol(enum.Enum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    MONGO = "Mongo"
    MYSQL = "MySQL"
    REDIS = "Redis"
    UDP = "UDP"
    UNSUPPORTED = "UNSUPPORTED"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_http2(self) -> bool:
        return self in (Protocol.HTTP2, Protocol.GRPC)


# Port-name prefixes and appProtocol values, lowercased (Istio's protocol selection table).
_BY_NAME = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "h2c": Protocol.HTTP2,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.GRPC_WEB,
    "https": Protocol.HTTPS,
    "tls": Protocol.TLS,
    "tcp": Protocol.TCP,
    "mongo": Protocol.MONGO,
    "mysql": Protocol.MYSQL,
    "redis": Protocol.REDIS,
    "udp": Protocol.UDP,
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.HTTPS,
}


def protocol_of(*, name: str, app_protocol: str | None, transport: str = "TCP") -> Protocol:
    """The application protocol of a service port (appProtocol, else name prefix, else UNSUPPORTED)."""
    if transport == "UDP":
        return Protocol.UDP
    if app_protocol:
        found = _BY_NAME.get(app_protocol.lower())
        if found is not None:
            return found
    lowered = name.lower()
    if lowered in _BY_NAME:
        return _BY_NAME[lowered]
    if lowered.startswith("grpc-web"):
        return Protocol.GRPC_WEB
    prefix = lowered.split("-", 1)[0]
    return _BY_NAME.get(prefix, Protocol.UNSUPPORTED)


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: Protocol

    @property
    def label(self) -> str:
        return self.name or str(self.port)


@dataclass(frozen=True, kw_only=True)
class Service:
    name: str
    namespace: str
    hostname: str
    cluster_ip: str | None  # None for headless services
    type: str
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] = field(default_factory=f.empty_labels)
    labels: Mapping[str, str] = field(default_factory=f.empty_labels)

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    @property
    def external_name(self) -> bool:
        return self.type == "ExternalName"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], *, domain: str = DEFAULT_DOMAIN) -> Service:
        """Parse a v1 Service. Raises `ObjectError` naming the field that is wrong."""
        namespace, name = f.metadata(obj)
        meta = f.mapping(obj.get("metadata"), "metadata")
        spec = f.mapping(obj.get("spec"), "spec")
        svc_type = f.string(spec.get("type"), "spec.type", default="ClusterIP")
        if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise f.ObjectError("spec.type", f"{svc_type!r} is not ClusterIP, NodePort, LoadBalancer or ExternalName")
        raw_ip = f.string(spec.get("clusterIP"), "spec.clusterIP", default="")
        # No address (omitted, "None", or an ExternalName service) means headless.
        cluster_ip = f.ip_address(raw_ip, "spec.clusterIP") if raw_ip not in ("", "None") else None
        ports: list[ServicePort] = []
        raw_ports = f.sequence(spec.get("ports"), "spec.ports")
        seen_numbers: set[tuple[int, str]] = set()
        seen_names: set[str] = set()
        for index, raw in enumerate(raw_ports):
            path = f"spec.ports[{index}]"
            item = f.mapping(raw, path)
            port_name = f.string(item.get("name"), f"{path}.name", default="")
            if not port_name and len(raw_ports) > 1:
                raise f.ObjectError(f"{path}.name", "is required when a service has more than one port")
            if port_name in seen_names:
                raise f.ObjectError(f"{path}.name", f"{port_name!r} is used by another port")
            seen_names.add(port_name)
            number = f.port_number(item.get("port"), f"{path}.port")
            transport = f.string(item.get("protocol"), f"{path}.protocol", default="TCP")
            if transport not in ("TCP", "UDP", "SCTP"):
                raise f.ObjectError(f"{path}.protocol", f"{transport!r} is not TCP, UDP or SCTP")
            if (number, transport) in seen_numbers:
                raise f.ObjectError(f"{path}.port", f"{number}/{transport} is used by another port")
            seen_numbers.add((number, transport))
            raw_target = item.get("targetPort")
            target: int | str
            if raw_target is None:
                target = number
            elif isinstance(raw_target, str) and not raw_target.isdigit():
                target = raw_target
            else:
                numeric = int(raw_target) if isinstance(raw_target, str) else raw_target
                target = f.port_number(numeric, f"{path}.targetPort")
            app_protocol = f.string(item.get("appProtocol"), f"{path}.appProtocol", default="")
            ports.append(
                ServicePort(
                    name=port_name,
                    port=number,
                    target_port=target,
                    protocol=protocol_of(name=port_name, app_protocol=app_protocol or None, transport=transport),
                )
            )
        return cls(
            name=name,
            namespace=namespace,
            hostname=hostname(name=name, namespace=namespace, domain=domain),
            cluster_ip=cluster_ip,
            type=svc_type,
            ports=tuple(ports),
            selector=f.labels(spec.get("selector"), "spec.selector"),
            labels=f.labels(meta.get("labels"), "metadata.labels"),
        )


def hostname(*, name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"
