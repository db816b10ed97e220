"""EDS: a ClusterLoadAssignment per requested `outbound|<port>||<fqdn>` cluster.

Endpoints are grouped by locality (the EndpointSlice zone) and carry their health (HEALTHY,
UNHEALTHY, DRAINING) and, when a sidecar runs there, the metadata `tlsMode: istio` that selects
the mTLS transport socket of the cluster (auto mTLS). A name that matches no service port gets an
empty assignment, so a client never waits for it.

A push reaches only proxies subscribed to an affected cluster and carries only the affected clusters
(SotW EDS is not a wildcard type: unsent clusters keep their endpoints): after endpoint changes
theirs, after Service changes (with or without endpoint changes) those Services' clusters; only a
mesh-config change or a forced push sends every subscribed assignment. A subscription that grows
(Envoy asks for the new cluster of an added Service) is answered with the added names alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

from envoy.config.core.v3 import base_pb2, health_check_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from controlplane.model.endpoints import NO_ENDPOINTS, Health, PortEndpoints
from controlplane.model.registry import MeshSnapshot, UpdateKind
from controlplane.model.services import ServicePort
from discovery.cache import Resource, ResourceGroup, XdsCache, field, varint
from discovery.connection import Watched
from discovery.generators import common as c
from discovery.generators.base import GenContext, Generated, ProxyView
from discovery.pushqueue import PushRequest
from discovery.xdstypes import ENDPOINT

_HEALTH = {
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.UNHEALTHY: health_check_pb2.UNHEALTHY,
    Health.DRAINING: health_check_pb2.DRAINING,
}

# A ClusterLoadAssignment is written field by field, byte for byte as the protobuf runtime writes it
# (`SerializeToString(deterministic=True)`: fields in number order, proto3 defaults left out):
# ~0.3 us per endpoint instead of ~4 with messages. A service's endpoints count once per port, so
# 1,000 addresses on 100 ports are 100,000 LbEndpoints to write after each change of them.
# Tags: field number << 3 | wire type (0 varint, 2 length-delimited).
_CLA_CLUSTER_NAME = 0x0A  # ClusterLoadAssignment.cluster_name = 1
_CLA_ENDPOINTS = 0x12  # ClusterLoadAssignment.endpoints = 2
_LOCALITY = 0x0A  # LocalityLbEndpoints.locality = 1
_LOCALITY_ZONE = 0x12  # Locality.zone = 2
_LB_ENDPOINTS = 0x12  # LocalityLbEndpoints.lb_endpoints = 2
_ENDPOINT = 0x0A  # LbEndpoint.endpoint = 1
_HEALTH_STATUS = 0x10  # LbEndpoint.health_status = 2, varint
_ADDRESS = 0x0A  # Endpoint.address = 1
_SOCKET_ADDRESS = 0x0A  # Address.socket_address = 1
_SOCKET_IP = 0x12  # SocketAddress.address = 2
_SOCKET_PORT = 0x18  # SocketAddress.port_value = 3, varint
_WEIGHT_ONE = wrappers_pb2.UInt32Value(value=1).SerializeToString()
_LOCALITY_WEIGHT = field(0x1A, _WEIGHT_ONE)  # LocalityLbEndpoints.load_balancing_weight = 3
_LB_WEIGHT = field(0x22, _WEIGHT_ONE)  # LbEndpoint.load_balancing_weight = 4


def _tls_mode_metadata() -> bytes:
    """LbEndpoint.metadata (= 3) `tlsMode: istio`, which selects the cluster's mTLS transport socket."""
    match = struct_pb2.Struct()
    match.update({c.TLS_MODE_KEY: "istio"})
    return field(0x1A, base_pb2.Metadata(filter_metadata={c.TLS_MATCH: match}).SerializeToString(deterministic=True))


_TLS_MODE_METADATA = _tls_mode_metadata()


def _framing(ip_length: int, port: int, health: Health, sidecar: bool) -> tuple[bytes, bytes]:
    """The bytes of an LbEndpoint (as a `LocalityLbEndpoints.lb_endpoints` field, tag and length
    included) before and after its address: they depend only on the address's length, the port and
    the endpoint's health and sidecar, so an assignment works them out once per combination."""
    port_field = bytes((_SOCKET_PORT,)) + varint(port)  # in a oneof: written even when 0
    status = _HEALTH[health]
    rest = (bytes((_HEALTH_STATUS,)) + varint(status) if status else b"") + (_TLS_MODE_METADATA if sidecar else b"")
    socket = 1 + len(varint(ip_length)) + ip_length + len(port_field)
    address = 1 + len(varint(socket)) + socket
    endpoint = 1 + len(varint(address)) + address
    lb_endpoint = 1 + len(varint(endpoint)) + endpoint + len(rest) + len(_LB_WEIGHT)
    before = (
        bytes((_LB_ENDPOINTS,))
        + varint(lb_endpoint)
        + bytes((_ENDPOINT,))
        + varint(endpoint)
        + bytes((_ADDRESS,))
        + varint(address)
        + bytes((_SOCKET_ADDRESS,))
        + varint(socket)
        + bytes((_SOCKET_IP,))
        + varint(ip_length)
    )
    return before, port_field + rest + _LB_WEIGHT


def load_assignment(name: str, endpoints: PortEndpoints) -> bytes:
    """The serialized ClusterLoadAssignment of cluster `name`: one LocalityLbEndpoints (weight 1) per
    zone, its endpoints in the given order (`PortEndpoints` keeps them by zone, then address)."""
    parts = [field(_CLA_CLUSTER_NAME, name.encode())] if name else []
    framings: dict[tuple[int, int, Health, bool], tuple[bytes, bytes]] = {}
    zone: str | None = None
    written: list[bytes] = []
    for ep, port in zip(endpoints.addresses, endpoints.ports, strict=True):
        if ep.zone != zone:
            if zone is not None:
                parts.append(_locality(zone, written))
            zone, written = ep.zone, []
        ip = ep.address.encode()
        key = (len(ip), port, ep.health, ep.sidecar)
        framing = framings.get(key)
        if framing is None:
            framing = framings[key] = _framing(*key)
        written += (framing[0], ip, framing[1])
    if zone is not None:
        parts.append(_locality(zone, written))
    return b"".join(parts)


def _locality(zone: str, lb_endpoints: list[bytes]) -> bytes:
    locality = field(_LOCALITY, field(_LOCALITY_ZONE, zone.encode()) if zone else b"")
    return field(_CLA_ENDPOINTS, locality + b"".join(lb_endpoints) + _LOCALITY_WEIGHT)


def _target(snapshot: MeshSnapshot, name: str) -> tuple[str, ServicePort | None]:
    parsed = c.parse_outbound(name)
    if parsed is None:
        return "", None
    port_number, _subset, host = parsed
    service = snapshot.services.get(host)
    return host, (service.port(port_number) if service is not None else None)


def resource(snapshot: MeshSnapshot, cache: XdsCache, name: str) -> Resource:
    """The (cached) assignment for one cluster name."""
    host, port = _target(snapshot, name)
    endpoints = snapshot.endpoints_for(host) if port is not None else None
    eps = endpoints.for_port(port.name) if endpoints is not None and port is not None else NO_ENDPOINTS
    revision = endpoints.revision if endpoints is not None else 0
    return cache.resource(ENDPOINT, name, key=(port, revision), build=lambda: load_assignment(name, eps))


@functools.lru_cache(maxsize=64)  # each entry can hold a 10,000-name subscription: keep few
def by_host(names: frozenset[str]) -> Mapping[str, tuple[str, ...]]:
    """Subscribed cluster names grouped by service hostname (shared by equal subscriptions)."""
    out: dict[str, list[str]] = {}
    for name in names:
        parsed = c.parse_outbound(name)
        if parsed is not None:
            out.setdefault(parsed[2], []).append(name)
    return {host: tuple(sorted(items)) for host, items in out.items()}


def changed_hosts(request: PushRequest) -> frozenset[str] | None:
    """The hosts whose assignments a push may have changed; None: any host's (mesh config, forced push).

    A Service's change can only change its own clusters' assignments, so a push caused by Services
    and endpoints carries just theirs, as Istio does (the other clusters are unchanged, and SotW EDS
    keeps what a response leaves out)."""
    if request.full and (not request.updates or request.has(UpdateKind.MESH)):
        return None
    return request.of_kind(UpdateKind.SERVICE) | request.of_kind(UpdateKind.ENDPOINTS)


def _group_key(snap: MeshSnapshot, watched: Watched) -> tuple[object, ...]:
    return ("eds", watched.names, snap.endpoints_version, snap.services_version)


class EndpointGenerator:
    type_url = ENDPOINT

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        hosts = changed_hosts(request)
        return hosts is None or not by_host(watched.names).keys().isdisjoint(hosts)

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache, request = ctx.snapshot, ctx.cache, ctx.request
        hosts = changed_hosts(request) if request is not None else None
        if hosts is not None:
            subscribed = by_host(watched.names)
            names = sorted(n for host in hosts for n in subscribed.get(host, ()))
            return self.only(ctx, names)
        group = cache.group(
            _group_key(snap, watched), lambda: [resource(snap, cache, n) for n in sorted(watched.names)]
        )
        return Generated(groups=(group,), names=watched.names)

    def kept(self, ctx: GenContext, watched: Watched) -> Generated | None:
        """What `generate` answers a request for `watched` with, if the cache keeps it whole; else None."""
        group = ctx.cache.kept_group(_group_key(ctx.snapshot, watched))
        return None if group is None else Generated(groups=(group,), names=watched.names)

    def keep(self, ctx: GenContext, watched: Watched, resources: Sequence[Resource]) -> Generated:
        """`generate`'s answer to a request for `watched`, made of `resources` (built by `only`)."""
        return Generated(
            groups=(ctx.cache.group(_group_key(ctx.snapshot, watched), lambda: resources),), names=watched.names
        )

    def only(self, ctx: GenContext, names: Iterable[str]) -> Generated:
        """The assignments of `names` alone: an incomplete response (the client keeps the others)."""
        group = ResourceGroup([resource(ctx.snapshot, ctx.cache, n) for n in names])
        return Generated(groups=(group,), complete=False)


GENERATOR = EndpointGenerator()
