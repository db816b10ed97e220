"""Services: Kubernetes `Service` objects as the mesh sees them.

A service is known by its hostname `<name>.<namespace>.svc.<domain>`. Each port carries the
application protocol the proxies use for it, decided as Istio does: the port's `appProtocol`
first, then the port name's prefix (`http`, `http-web`, `grpc-api`, ...), else "unsupported",
which meshplane proxies as opaque TCP (Istio would sniff; meshplane does not).

`ExternalName` services have no endpoints in the mesh and are skipped by the generators; headless
services (`clusterIP: None`, or no `clusterIP` in a local config file) get clusters and HTTP
routes but no per-address TCP listener. UDP and SCTP ports are not proxied (Envoy's sidecar
listeners carry TCP only).

Conflicts between services are decided here, once per set of services (`find_conflicts`), as
Istio does: services are taken oldest first (`metadata.creationTimestamp`; a missing one counts as
oldest, as Istio's zero time; ties by name, then namespace), and the first service port to claim a
(clusterIP, port) owns it. A later port on the same address loses only that address: its TCP
listener, or for HTTP its clusterIP domains; its other ports and names are unaffected. An HTTP
port on one of the sidecar's own listener ports (`SIDECAR_LISTENER_PORTS`) gets no outbound
listener in REDIRECT mode, where it would need a second `0.0.0.0` listener on that port.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controlplane.literals import natural
from controlplane.model import fields as f
from controlplane.model import names

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
    SCTP = "SCTP"
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
    if transport == "SCTP":
        return Protocol.SCTP
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
    created: datetime | None = None  # metadata.creationTimestamp, in UTC

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    @property
    def external_name(self) -> bool:
        return self.type == "ExternalName"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    @property
    def outbound_ports(self) -> tuple[ServicePort, ...]:
        """The ports that get clusters and listeners: not UDP or SCTP; none for ExternalName."""
        if self.external_name:
            return ()
        return tuple(p for p in self.ports if p.protocol not in (Protocol.UDP, Protocol.SCTP))

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], *, domain: str = DEFAULT_DOMAIN) -> Service:
        """Parse a v1 Service. Raises `ObjectError` naming the field that is wrong."""
        namespace, name = f.metadata(obj)
        if not _DNS_1035.fullmatch(name):
            raise f.ObjectError(
                "metadata.name",
                f"{name!r} is not a valid Service name: use at most 63 lowercase letters, digits and '-', "
                "starting with a letter and ending with a letter or digit",
            )
        if namespace and not _DNS_1123.fullmatch(namespace):
            raise f.ObjectError(
                "metadata.namespace",
                f"{namespace!r} is not a valid namespace: use at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit",
            )
        meta = f.mapping(obj.get("metadata"), "metadata")
        spec = f.mapping(obj.get("spec"), "spec")
        svc_type = f.string(spec.get("type"), "spec.type", default="ClusterIP")
        if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise f.ObjectError("spec.type", f"{svc_type!r} is not ClusterIP, NodePort, LoadBalancer or ExternalName")
        raw_ip = f.string(spec.get("clusterIP"), "spec.clusterIP", default="")
        # No address (omitted, "None", or an ExternalName service) means headless.
        cluster_ip = f.ip_address(raw_ip, "spec.clusterIP") if raw_ip not in ("", "None") else None
        if cluster_ip in ("0.0.0.0", "::"):
            raise f.ObjectError(
                "spec.clusterIP", f"{raw_ip!r} is not a usable address; omit it or use 'None' (headless)"
            )
        ports: list[ServicePort] = []
        raw_ports = f.sequence(spec.get("ports"), "spec.ports")
        seen_numbers: set[tuple[int, str]] = set()
        seen_names: set[str] = set()
        for index, raw in enumerate(raw_ports):
            path = f"spec.ports[{index}]"
            item = f.mapping(raw, path)
            port_name = f.string(item.get("name"), f"{path}.name", default="")
            if port_name:
                names.dns1123_label(port_name, field=f"{path}.name")  # ValidateService's rule
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
            numeric = natural(raw_target) if isinstance(raw_target, str) else raw_target
            target: int | str
            if raw_target is None:
                target = number
            elif numeric is None:  # a port's name
                target = raw_target
            else:
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
            created=_timestamp(meta.get("creationTimestamp"), "metadata.creationTimestamp"),
        )


_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _timestamp(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    text = f.string(value, path)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise f.ObjectError(path, f"{text!r} is not an RFC 3339 time such as 2024-05-01T12:00:00Z")
    return parsed.astimezone(UTC)


def hostname(*, name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"


# The ports of a REDIRECT sidecar's own listeners on 0.0.0.0: virtualOutbound, virtualInbound, and
# the bootstrap's readiness and Prometheus listeners (Istio's conflictWithReservedListener).
SIDECAR_LISTENER_PORTS: Mapping[int, str] = {
    15001: "the sidecar's outbound capture listener (virtualOutbound)",
    15006: "the sidecar's inbound capture listener (virtualInbound)",
    15021: "the sidecar's readiness listener",
    15090: "the sidecar's Prometheus listener",
}

_OLDEST = datetime.min.replace(tzinfo=UTC)


def precedence(service: Service) -> tuple[datetime, str, str]:
    """Sort key of services for contested config: oldest first, then by name, then namespace (Istio's order)."""
    return service.created or _OLDEST, service.name, service.namespace


class ConflictKind(enum.Enum):
    """What a service port lost, named after the listener kinds involved (loser over current owner)."""

    TCP_OVER_TCP = "tcp_over_tcp"  # its TCP listener: another TCP port owns the address
    TCP_OVER_HTTP = "tcp_over_http"  # its TCP listener: an HTTP port owns the address
    HTTP_OVER_TCP = "http_over_tcp"  # its clusterIP domains: a TCP port takes all traffic to the address
    DUPLICATE_DOMAIN = "duplicate_domain"  # its clusterIP domains: another HTTP port already has them
    RESERVED_PORT = "reserved_port"  # its outbound HTTP listener: the port is one of the sidecar's own


@dataclass(frozen=True, kw_only=True)
class Conflict:
    """A service port that lost part of its outbound config; `winner` is None for RESERVED_PORT."""

    kind: ConflictKind
    service: Service
    port: ServicePort
    winner: Service | None = None

    @property
    def field(self) -> str:
        return f"spec.ports[{self.service.ports.index(self.port)}].port"

    @property
    def message(self) -> str:
        number, kind = self.port.port, self.kind
        if kind is ConflictKind.RESERVED_PORT:
            return (
                f"HTTP port {number} is {SIDECAR_LISTENER_PORTS[number]}; sidecars in REDIRECT mode get no outbound "
                "listener for it, so calls to it are not routed by the mesh (use another port)"
            )
        assert self.winner is not None
        owner = (
            f"port {number} of Service {self.winner.ref} has the same clusterIP {self.service.cluster_ip} and keeps "
            "it (the oldest Service wins; ties go by name, then namespace)"
        )
        lost = {
            ConflictKind.TCP_OVER_TCP: "sidecars get no TCP listener for this port",
            ConflictKind.TCP_OVER_HTTP: "sidecars get no TCP listener for this port; its traffic is routed as HTTP",
            ConflictKind.HTTP_OVER_TCP: "sidecars send all traffic to that address over TCP to the other Service, "
            "so this port is unreachable through the mesh",
            ConflictKind.DUPLICATE_DOMAIN: "sidecars route requests for that address to the other Service; this "
            "port is reached by its host names only",
        }[kind]
        return f"{owner}; {lost} (give the Services different clusterIPs or ports)"


@dataclass(frozen=True, kw_only=True)
class Conflicts:
    """The conflicts of one set of services, and which service ports lost their (clusterIP, port)."""

    items: tuple[Conflict, ...] = ()
    lost: frozenset[tuple[str, int]] = frozenset()  # (hostname, port)

    def owns_address(self, service: Service, port: int) -> bool:
        """Whether `service` has a clusterIP and keeps (clusterIP, `port`): its TCP listener or its IP domains."""
        return service.cluster_ip is not None and (service.hostname, port) not in self.lost

    def count(self, kind: ConflictKind) -> int:
        return sum(1 for c in self.items if c.kind is kind)


def find_conflicts(services: Iterable[Service]) -> Conflicts:
    """Decide every contested (clusterIP, port) among `services`, oldest first (see the module docstring)."""
    owners: dict[tuple[str, int], tuple[Service, ServicePort]] = {}
    items: list[Conflict] = []
    for service in sorted(services, key=precedence):
        for port in service.outbound_ports:
            if port.protocol.is_http and port.port in SIDECAR_LISTENER_PORTS:
                items.append(Conflict(kind=ConflictKind.RESERVED_PORT, service=service, port=port))
            if service.cluster_ip is None:
                continue
            owner, owner_port = owners.setdefault((service.cluster_ip, port.port), (service, port))
            if owner is service:
                continue
            if port.protocol.is_http:
                kind = ConflictKind.DUPLICATE_DOMAIN if owner_port.protocol.is_http else ConflictKind.HTTP_OVER_TCP
            else:
                kind = ConflictKind.TCP_OVER_HTTP if owner_port.protocol.is_http else ConflictKind.TCP_OVER_TCP
            items.append(Conflict(kind=kind, service=service, port=port, winner=owner))
    lost = frozenset((c.service.hostname, c.port.port) for c in items if c.winner is not None)
    return Conflicts(items=tuple(items), lost=lost)
