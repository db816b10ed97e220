"""RDS for sidecars: one route configuration per outbound HTTP port, named after the port.

Each service with an HTTP port of that number gets a virtual host `<fqdn>:<port>` whose domains
are the names a client may use: `<fqdn>`, `<name>.<ns>.svc`, `<name>.<ns>`, the cluster IP
(bracketed if IPv6), and `<name>` for a proxy in the service's own namespace. As in Istio's sidecar
routes, the domains carry no `:<port>`: the route configuration sets `ignore_port_in_host_matching`,
so Envoy drops any port from the Host header before matching (`web:80` and `web` reach the same
virtual host), which halves the domains and the bytes of every RDS push. The cluster IP is left
out when another service owns that (clusterIP, port) (`MeshSnapshot.conflicts`), so no two virtual
hosts share a domain (Envoy would reject the whole route configuration). Its one route sends
everything to `outbound|<port>||<fqdn>` with Istio's default retry policy (2 retries on
connect-failure, refused-stream, unavailable, cancelled and retriable status codes, preferring hosts
not tried yet, up to 5 host selections), so a request that meets an endpoint whose sidecar is already
gone tries another. Other hosts reach `allow_any` (pass through) or, under `REGISTRY_ONLY`,
`block_all` (502).

A route configuration depends on the proxy's namespace (short names), so it is built once per
namespace and port and shared by the proxies there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2

from controlplane.literals import natural
from controlplane.model.meshconfig import OutboundPolicy
from controlplane.model.registry import MeshSnapshot, UpdateKind
from controlplane.model.services import Service
from discovery.cache import Resource, ResourceGroup, XdsCache
from discovery.connection import Watched
from discovery.generators import common as c
from discovery.generators.base import GenContext, Generated, ProxyView
from discovery.pushqueue import PushRequest
from discovery.xdstypes import ROUTE


def domains(service: Service, *, proxy_namespace: str, with_address: bool) -> list[str]:
    """The Host header values (without port) that reach `service`; the cluster IP only `with_address`."""
    short_ns = f"{service.name}.{service.namespace}"
    hosts = [service.hostname, f"{short_ns}.svc", short_ns]
    if service.namespace == proxy_namespace:
        hosts.append(service.name)
    if with_address and service.cluster_ip:
        hosts.append(f"[{service.cluster_ip}]" if ":" in service.cluster_ip else service.cluster_ip)
    return hosts


def default_retry_policy() -> rc.RetryPolicy:
    """Istio's default for routes without a VirtualService (pilot/pkg/networking/core/route/retry)."""
    return rc.RetryPolicy(
        retry_on="connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        num_retries=wrappers_pb2.UInt32Value(value=2),
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=c.typed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=5,
    )


def _virtual_host(service: Service, port: int, *, proxy_namespace: str, with_address: bool) -> rc.VirtualHost:
    cluster = c.outbound_cluster(port, service.hostname)
    return rc.VirtualHost(
        name=f"{service.hostname}:{port}",
        domains=domains(service, proxy_namespace=proxy_namespace, with_address=with_address),
        routes=[
            rc.Route(
                name="default",
                match=rc.RouteMatch(prefix="/"),
                route=rc.RouteAction(cluster=cluster, timeout=c.duration(0), retry_policy=default_retry_policy()),
            )
        ],
    )


@functools.cache
def _fallback(policy: OutboundPolicy) -> rc.VirtualHost:
    """The catch-all virtual host, built once per policy: every route configuration has one, and a
    request may name up to `names_per_request` of them. Callers copy it into their own message (a
    repeated field assignment copies); it is never mutated."""
    if policy is OutboundPolicy.ALLOW_ANY:
        return rc.VirtualHost(
            name="allow_any",
            domains=["*"],
            routes=[
                rc.Route(
                    name="allow_any",
                    match=rc.RouteMatch(prefix="/"),
                    route=rc.RouteAction(cluster=c.PASSTHROUGH, timeout=c.duration(0)),
                )
            ],
        )
    return rc.VirtualHost(
        name="block_all",
        domains=["*"],
        routes=[
            rc.Route(
                name="block_all", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=502)
            )
        ],
    )


def route_configuration(snapshot: MeshSnapshot, name: str, *, proxy_namespace: str) -> route_pb2.RouteConfiguration:
    hosts: list[rc.VirtualHost] = []
    port = natural(name)
    if port is not None:
        for service in snapshot.http_services_by_port.get(port, ()):
            owned = snapshot.conflicts.owns_address(service, port)
            hosts.append(_virtual_host(service, port, proxy_namespace=proxy_namespace, with_address=owned))
    hosts.append(_fallback(snapshot.mesh.outbound_policy))
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=hosts,
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        ignore_port_in_host_matching=True,
    )


def resource(snapshot: MeshSnapshot, cache: XdsCache, name: str, *, namespace: str) -> Resource:
    return cache.resource(
        ROUTE,
        name,
        key=(snapshot.services_version, snapshot.mesh_version),
        variant=namespace,
        build=lambda: route_configuration(snapshot, name, proxy_namespace=namespace),
    )


def _group_key(ctx: GenContext, watched: Watched) -> tuple[object, ...]:
    snap = ctx.snapshot
    return ("rds", watched.names, ctx.view.namespace, snap.services_version, snap.mesh_version)


class RouteGenerator:
    type_url = ROUTE

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        return request.has(UpdateKind.SERVICE, UpdateKind.MESH) or (request.full and not request.updates)

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache, ns = ctx.snapshot, ctx.cache, ctx.view.namespace
        group = cache.group(
            _group_key(ctx, watched), lambda: [resource(snap, cache, n, namespace=ns) for n in sorted(watched.names)]
        )
        return Generated(groups=(group,), names=watched.names)

    def kept(self, ctx: GenContext, watched: Watched) -> Generated | None:
        """What `generate` answers a request for `watched` with, if the cache keeps it whole; else None."""
        group = ctx.cache.kept_group(_group_key(ctx, watched))
        return None if group is None else Generated(groups=(group,), names=watched.names)

    def keep(self, ctx: GenContext, watched: Watched, resources: Sequence[Resource]) -> Generated:
        """`generate`'s answer to a request for `watched`, made of `resources` (built by `only`)."""
        return Generated(groups=(ctx.cache.group(_group_key(ctx, watched), lambda: resources),), names=watched.names)

    def only(self, ctx: GenContext, names: Iterable[str]) -> Generated:
        """The route configurations of `names` alone, for a grown SotW subscription (a new HTTP port's)."""
        snap, cache, ns = ctx.snapshot, ctx.cache, ctx.view.namespace
        return Generated(
            groups=(ResourceGroup([resource(snap, cache, n, namespace=ns) for n in names]),), complete=False
        )


GENERATOR = RouteGenerator()
