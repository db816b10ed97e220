"""Proxyless gRPC (node metadata `GENERATOR: grpc`): what grpcio's xDS client needs (gRFC A27/A28).

- LDS: for each requested `host:port`, a listener of that exact name whose `api_listener` holds an
  HttpConnectionManager that takes its routes from RDS over ADS, route configuration of the same
  name. The host may be the full name or a short form (`<name>`, `<name>.<ns>`, `<name>.<ns>.svc`,
  resolved from the client's namespace). Names that match no service port are left out, which
  the client reads as "does not exist".
- RDS: one virtual host matching the requested authority, routing to `outbound|<port>||<fqdn>`.
- CDS: the requested `outbound|...` clusters, type EDS over ADS, round robin. A cluster gets mesh
  mTLS (gRFC A29: an UpstreamTlsContext as the cluster's `transport_socket`, certificates from the
  bootstrap's certificate provider `default`) when mesh auto mTLS is on and every endpoint of that
  service port (at least one) runs a sidecar (`tlsMode: istio`); otherwise plaintext. gRPC has no
  transport socket matches, so one endpoint without a sidecar makes the whole cluster plaintext.
  The allowed SANs are the SPIFFE identities of the endpoints' pods: a sidecar is known from its
  pod, so its service account always is. Only clients that use xDS credentials apply this (others
  ignore it and stay plaintext). Istio's grpcgen sends mTLS only for an explicit ISTIO_MUTUAL
  DestinationRule; meshplane has no DestinationRules yet, and a sidecar server accepts the
  client's mTLS on any port (its mTLS filter chains do not match on ALPN).
- EDS: the same assignments as for sidecars.
Every response carries exactly the requested names; there are no wildcard subscriptions here.
When endpoints change which sidecars or identities serve a port (`PushRequest.tls_changed`),
clients watching that service's clusters get CDS too, not only EDS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.literals import natural
from controlplane.model.endpoints import EndpointAddress, ServiceEndpoints
from controlplane.model.registry import MeshSnapshot, UpdateKind
from controlplane.model.services import Service, ServicePort
from discovery.cache import Resource, ResourceGroup
from discovery.connection import Watched
from discovery.generators import common as c
from discovery.generators import eds
from discovery.generators.base import GenContext, Generated, Generator, ProxyView
from discovery.generators.cds import outbound_ports
from discovery.pushqueue import PushRequest
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE


def resolve(snapshot: MeshSnapshot, name: str, *, namespace: str) -> tuple[Service, ServicePort] | None:
    """The service port a `host:port` target names, or None."""
    host, sep, port_text = name.rpartition(":")
    port = natural(port_text) if sep else None
    if port is None:
        return None
    candidates = [host]
    parts = host.split(".")
    if len(parts) == 1:
        candidates.append(f"{host}.{namespace}.svc.{snapshot.domain}")
    elif len(parts) == 2:
        candidates.append(f"{host}.svc.{snapshot.domain}")
    elif len(parts) == 3 and parts[2] == "svc":
        candidates.append(f"{host}.{snapshot.domain}")
    for candidate in candidates:
        service = snapshot.services.get(candidate)
        if service is None:
            continue
        found = next((p for p in outbound_ports(service) if p.port == port), None)
        if found is not None:
            return service, found
    return None


def _listener(name: str) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=c.ads(), route_config_name=name),
        http_filters=[c.router_filter()],
    )
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=c.typed(manager)))


def _route(name: str, service: Service, port: ServicePort) -> route_pb2.RouteConfiguration:
    host = name.rpartition(":")[0]
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            rc.VirtualHost(
                name=name,
                domains=sorted({name, host, service.hostname, f"{service.hostname}:{port.port}"}),
                routes=[
                    rc.Route(
                        match=rc.RouteMatch(prefix=""),
                        route=rc.RouteAction(cluster=c.outbound_cluster(port.port, service.hostname)),
                    )
                ],
            )
        ],
    )


def sidecar_accounts(addresses: Sequence[EndpointAddress]) -> tuple[str, ...] | None:
    """The service accounts behind `addresses` when every one (at least one) runs a sidecar, else None."""
    if not addresses or not all(a.sidecar for a in addresses):
        return None
    return tuple(sorted({a.service_account for a in addresses}))


def tls_facts(endpoints: ServiceEndpoints) -> frozenset[tuple[str, tuple[str, ...] | None]]:
    """What proxyless clusters of one service read from its endpoints, per port name; a change here
    needs a CDS push to proxyless clients (see `discovery.service`). Ports served by the same slices
    share their addresses, which are looked at once."""
    facts: dict[int, tuple[str, ...] | None] = {}
    out = []
    for name in endpoints.port_names:
        addresses = endpoints.for_port(name).addresses
        if id(addresses) not in facts:
            facts[id(addresses)] = sidecar_accounts(addresses)
        out.append((name, facts[id(addresses)]))
    return frozenset(out)


def mtls_sans(snapshot: MeshSnapshot, service: Service, port: ServicePort) -> tuple[str, ...] | None:
    """The SPIFFE identities a proxyless client must see on `service`'s port, or None for plaintext."""
    if not snapshot.mesh.enable_auto_mtls:
        return None
    accounts = sidecar_accounts(snapshot.endpoints_for(service.hostname).for_port(port.name).addresses)
    if accounts is None:
        return None
    return tuple(c.spiffe_id(snapshot.mesh.trust_domain, service.namespace, sa) for sa in accounts)


def _cluster(name: str, sans: tuple[str, ...] | None) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=c.ads()),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        connect_timeout=c.duration(10),
    )
    if sans is not None:
        cluster.transport_socket.CopyFrom(c.proxyless_upstream_mtls(sans=sans))
    return cluster


def _generated(resources: list[Resource]) -> Generated:
    return Generated(groups=(ResourceGroup(resources),), names=frozenset(r.name for r in resources))


class _Base:
    """Listeners, routes and clusters change only with services (or the mesh config)."""

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        return request.has(UpdateKind.SERVICE, UpdateKind.MESH) or (request.full and not request.updates)


class GrpcListenerGenerator(_Base):
    type_url = LISTENER

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache = ctx.snapshot, ctx.cache
        resources = [
            cache.resource(LISTENER, name, key="api", variant="grpc", build=lambda name=name: _listener(name))  # type: ignore[misc]
            for name in sorted(watched.names)
            if resolve(snap, name, namespace=ctx.view.namespace) is not None
        ]
        return _generated(resources)


class GrpcRouteGenerator(_Base):
    type_url = ROUTE

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache = ctx.snapshot, ctx.cache
        resources = []
        for name in sorted(watched.names):
            found = resolve(snap, name, namespace=ctx.view.namespace)
            if found is None:
                continue
            service, port = found
            resources.append(
                cache.resource(
                    ROUTE,
                    name,
                    key=(service.hostname, port),
                    variant="grpc",
                    build=lambda name=name, service=service, port=port: _route(name, service, port),  # type: ignore[misc]
                )
            )
        return _generated(resources)


class GrpcClusterGenerator(_Base):
    type_url = CLUSTER

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        if super().needs_push(request, view, watched):
            return True
        return not eds.by_host(watched.names).keys().isdisjoint(request.tls_changed)

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache = ctx.snapshot, ctx.cache
        resources = []
        for name in sorted(watched.names):
            parsed = c.parse_outbound(name)
            service = snap.services.get(parsed[2]) if parsed else None
            port = service.port(parsed[0]) if parsed and service else None
            if service is None or port is None:
                continue
            sans = mtls_sans(snap, service, port)
            resources.append(
                cache.resource(
                    CLUSTER,
                    name,
                    key=sans,
                    variant="grpc",
                    build=lambda name=name, sans=sans: _cluster(name, sans),  # type: ignore[misc]
                )
            )
        return _generated(resources)


class GrpcEndpointGenerator:
    """Proxyless clients read the same assignments as sidecars."""

    type_url = ENDPOINT

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        return eds.GENERATOR.needs_push(request, view, watched)

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        return eds.GENERATOR.generate(ctx, watched)

    def only(self, ctx: GenContext, names: Iterable[str]) -> Generated:
        return eds.GENERATOR.only(ctx, names)

    def kept(self, ctx: GenContext, watched: Watched) -> Generated | None:
        return eds.GENERATOR.kept(ctx, watched)

    def keep(self, ctx: GenContext, watched: Watched, resources: Sequence[Resource]) -> Generated:
        return eds.GENERATOR.keep(ctx, watched, resources)


GENERATORS: Mapping[str, Generator] = {
    LISTENER: GrpcListenerGenerator(),
    ROUTE: GrpcRouteGenerator(),
    CLUSTER: GrpcClusterGenerator(),
    ENDPOINT: GrpcEndpointGenerator(),
}
