"""CDS: one EDS cluster per service port, inbound clusters (sidecars only), and the special clusters.

- `outbound|<port>||<fqdn>`: type EDS over ADS. With auto mTLS (mesh default) the cluster has one
  transport socket match, `tlsMode-istio`: endpoints whose metadata says `tlsMode: istio` (a sidecar
  runs there) get ISTIO_MUTUAL TLS (certificate `default` and trust bundle `ROOTCA` over SDS from the
  bootstrap's `sds-grpc` cluster, SNI `outbound_.<port>_._.<fqdn>`, the service's SPIFFE identities
  as allowed SANs); all others match nothing and get the cluster's own transport socket, which is
  left unset: plaintext (raw buffer). Istio spells that out as a second match, `tlsMode-disabled`,
  with an empty criterion and a raw-buffer socket: the same connections, but 140 more bytes for
  each cluster in every CDS response (a sidecar's CDS for 1,000 services: 741 KB with it, 599 KB
  without; bench/xds, 4 and 3 runs on the same machine within the hour: the service push on the
  secure port took 1.18, 1.19, 1.20 and 1.35x the plaintext one without it, 1.26, 1.29 and 1.43x
  with it) and one more stats scope per cluster in every Envoy. Which endpoints have a sidecar is
  EDS data, so a pod gaining a sidecar changes only EDS.
  When the destination's workloads have PeerAuthentication DISABLE on the target port, the cluster
  is plaintext for every endpoint (Istio's auto mTLS does the same).
  Istio also gives each cluster filter metadata `istio: {services: [{host, name, namespace}]}`,
  which its telemetry filters read; meshplane configures no filter that reads it, so it is left
  out: ~116 bytes per cluster on the wire (599 KB -> 483 KB of CDS for 1,000 services, 13% of a
  service push) and ~4.4 KB per cluster in every sidecar's Envoy (1,000 such clusters, static,
  Envoy 1.40: 59.1 MiB allocated with it, 54.8 MiB without).
- `inbound|<port>||`: STATIC, to the application on 127.0.0.1:<port>; with interception NONE on
  the proxy's `LOOPBACK_ADDRESS` instead (default 127.0.0.1).
- `BlackHoleCluster` (no endpoints), `PassthroughCluster` and `InboundPassthroughCluster`
  (ORIGINAL_DST).

Routers (gateway pods) get the same outbound clusters and `BlackHoleCluster` only: no inbound
clusters, and no passthrough clusters since a gateway has no original-destination listeners (as
Istio's gateways). `GENERATOR` serves sidecars, `GATEWAY` routers.

Outbound clusters are the same for every proxy and built once per services version; inbound
clusters depend only on the workload's ports and the application's address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2

from controlplane.model.registry import MeshSnapshot, UpdateKind
from controlplane.model.security import MtlsMode
from controlplane.model.services import Service, ServicePort
from discovery.cache import Resource, ResourceGroup, XdsCache
from discovery.connection import Watched
from discovery.generators import common as c
from discovery.generators.base import GenContext, Generated, InboundPort, ProxyView, only
from discovery.pushqueue import PushRequest
from discovery.xdstypes import CLUSTER


def outbound_ports(service: Service) -> list[ServicePort]:
    """The ports of a service that get clusters and listeners (`Service.outbound_ports`)."""
    return list(service.outbound_ports)


def _outbound(snapshot: MeshSnapshot, service: Service, port: ServicePort) -> cluster_pb2.Cluster:
    name = c.outbound_cluster(port.port, service.hostname)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=c.ads()),
        connect_timeout=c.duration(snapshot.mesh.connect_timeout),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            locality_weighted_lb_config=cluster_pb2.Cluster.CommonLbConfig.LocalityWeightedLbConfig()
        ),
    )
    if port.protocol.is_http2:
        for key, value in c.http2_options().items():
            cluster.typed_extension_protocol_options[key].CopyFrom(value)
    if snapshot.mesh.enable_auto_mtls and destination_mode(snapshot, service, port) is not MtlsMode.DISABLE:
        accounts = snapshot.endpoints_for(service.hostname).service_accounts
        sans = [c.spiffe_id(snapshot.mesh.trust_domain, service.namespace, sa) for sa in accounts]
        match = struct_pb2.Struct()
        match.update({c.TLS_MODE_KEY: "istio"})
        cluster.transport_socket_matches.append(
            cluster_pb2.Cluster.TransportSocketMatch(
                name="tlsMode-istio",
                match=match,
                transport_socket=c.upstream_mtls(
                    sni=f"outbound_.{port.port}_._.{service.hostname}", sans=sans, protocol=port.protocol
                ),
            )
        )
    return cluster


def destination_mode(snapshot: MeshSnapshot, service: Service, port: ServicePort) -> MtlsMode:
    """The PeerAuthentication mode of the service's workloads on its target port (Istio: the service's
    selector stands for its workloads). Auto mTLS sends plaintext to a DISABLE destination, as Istio does:
    its sidecars would not accept mTLS there."""
    mtls = snapshot.mtls_for(namespace=service.namespace, labels=service.selector)
    target = port.target_port if isinstance(port.target_port, int) else port.port
    return mtls.for_port(target)


def outbound_resources(
    snapshot: MeshSnapshot, cache: XdsCache, services: Iterable[Service] | None = None
) -> list[Resource]:
    """Every outbound cluster of the snapshot (or of `services`), each cached on the inputs it is built from."""
    out: list[Resource] = []
    for service in snapshot.services.values() if services is None else services:
        accounts = snapshot.endpoints_for(service.hostname).service_accounts
        for port in outbound_ports(service):
            name = c.outbound_cluster(port.port, service.hostname)
            out.append(
                cache.resource(
                    CLUSTER,
                    name,
                    key=(service, port, accounts, snapshot.mesh, destination_mode(snapshot, service, port)),
                    build=lambda s=service, p=port: _outbound(snapshot, s, p),  # type: ignore[misc]
                )
            )
    return out


def _inbound(port: InboundPort, *, app_address: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=c.inbound_cluster(port.port),
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=c.duration(10),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=c.inbound_cluster(port.port),
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(app_address, port.port))
                        )
                    ]
                )
            ],
        ),
    )
    if port.protocol.is_http2:
        for key, value in c.http2_options().items():
            cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def _special(name: str) -> cluster_pb2.Cluster:
    if name == c.BLACKHOLE:
        return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC, connect_timeout=c.duration(10))
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=c.duration(10),
    )
    if name == c.INBOUND_PASSTHROUGH:
        cluster.upstream_bind_config.CopyFrom(
            address_pb2.BindConfig(
                source_address=address_pb2.SocketAddress(address=c.INBOUND_PASSTHROUGH_BIND, port_value=0)
            )
        )
    return cluster


SPECIAL = (c.BLACKHOLE, c.PASSTHROUGH, c.INBOUND_PASSTHROUGH)
GATEWAY_SPECIAL = (c.BLACKHOLE,)


PIECE_SERVICES = 200  # building their clusters anew: ~10 ms


def _outbound_key(snap: MeshSnapshot) -> tuple[object, ...]:
    return ("cds-outbound", snap.services_version, snap.mesh_version, snap.policy_version)


class ClusterGenerator:
    """Clusters for sidecars, or with `gateway=True` for routers (outbound and `BlackHoleCluster` only)."""

    type_url = CLUSTER

    def __init__(self, *, gateway: bool = False) -> None:
        self.gateway = gateway

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        # POLICY: a destination's PeerAuthentication DISABLE turns its clusters' mTLS off
        if request.has(UpdateKind.SERVICE, UpdateKind.MESH, UpdateKind.POLICY) or (
            request.full and not request.updates
        ):
            return True
        # the proxy's own workload changes only its inbound clusters, which routers do not have
        return not self.gateway and bool(request.of_kind(UpdateKind.WORKLOAD) & set(view.proxy.ip_addresses))

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache = ctx.snapshot, ctx.cache
        outbound = cache.group(_outbound_key(snap), lambda: outbound_resources(snap, cache))
        local = self._gateway_local(cache) if self.gateway else self._sidecar_local(ctx)
        groups: tuple[ResourceGroup, ...] = (outbound, local)
        if not watched.wildcard:
            groups = tuple(only(g, watched.names) for g in groups)
        return Generated(groups=groups, names=frozenset(r.name for g in groups for r in g.resources))

    def pieces(self, ctx: GenContext) -> Iterator[None]:
        """The outbound clusters into the cache `PIECE_SERVICES` Services at a time (`BuildsInPieces`):
        building 4,000 clusters anew (every Service's identities changed) took 120-180 ms in one turn."""
        snap = ctx.snapshot
        if ctx.cache.kept_group(_outbound_key(snap)) is not None:
            return
        services = list(snap.services.values())
        for start in range(0, len(services), PIECE_SERVICES):
            yield
            outbound_resources(snap, ctx.cache, services[start : start + PIECE_SERVICES])

    @staticmethod
    def _gateway_local(cache: XdsCache) -> ResourceGroup:
        return cache.group(
            ("cds-gateway",),
            lambda: [cache.resource(CLUSTER, n, key=n, build=lambda n=n: _special(n)) for n in GATEWAY_SPECIAL],  # type: ignore[misc]
        )

    @staticmethod
    def _sidecar_local(ctx: GenContext) -> ResourceGroup:
        cache = ctx.cache
        app = ctx.view.app_address
        return cache.group(
            ("cds-local", ctx.view.inbound_key),
            lambda: [
                *(
                    cache.resource(
                        CLUSTER,
                        c.inbound_cluster(p.port),
                        key=p,
                        variant=app,
                        build=lambda p=p: _inbound(p, app_address=app),  # type: ignore[misc]
                    )
                    for p in ctx.view.inbound
                ),
                *(cache.resource(CLUSTER, n, key=n, build=lambda n=n: _special(n)) for n in SPECIAL),  # type: ignore[misc]
            ],
        )


GENERATOR = ClusterGenerator()
GATEWAY = ClusterGenerator(gateway=True)
