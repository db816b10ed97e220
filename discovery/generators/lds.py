"""LDS for sidecars, in the two interception modes.

REDIRECT (iptables sends outbound traffic to 15001 and inbound traffic to 15006):
- `virtualOutbound` 0.0.0.0:15001 with `use_original_dst`: hands each connection to the listener
  for its original destination, else passes it through (`PassthroughCluster`, mesh
  `outboundTrafficPolicy: ALLOW_ANY`) or drops it (`BlackHoleCluster`, `REGISTRY_ONLY`);
- `0.0.0.0_<port>` for every port with an HTTP service: HTTP connection manager, routes from RDS
  route configuration `<port>`; `<clusterIP>_<port>` for every TCP service port: TCP proxy to its
  cluster. Neither binds a socket (`bind_to_port: false`); they only receive from 15001.
  Conflicts are decided by the model (`MeshSnapshot.conflicts`, oldest service first): a TCP port
  whose (clusterIP, port) another service owns gets no listener (Envoy would reject two listeners on
  one address, and with them every listener of the response), and there is no `0.0.0.0_<port>` for
  the sidecar's own listener ports (15001, 15006, 15021, 15090);
- `virtualInbound` 0.0.0.0:15006: per inbound port, filter chains chosen by the PeerAuthentication
  mode of that port: STRICT accepts only mesh mTLS, PERMISSIVE accepts mTLS and plaintext,
  DISABLE plaintext; other ports pass through to `InboundPassthroughCluster` under the workload's
  default mode.

NONE (no iptables; every listener binds its own socket). `<loopback>` is the proxy's
`LOOPBACK_ADDRESS` node metadata (default 127.0.0.1), so several proxies on one machine can each
have their own, as each pod has its own 127.0.0.1. Port layout:
- outbound: `<loopback>_<port>` bound on <loopback>:<service port>; the application calls
  `<loopback>:<port>` (HTTP services are told apart by Host header; when several TCP services share
  a port, the oldest gets it, as `services.precedence` orders them). Ports the workload itself serves
  and Envoy's own ports (15000-15090) are not bound;
- inbound: `<pod IP>_<target port>` bound on the pod's address and target port, with the same mTLS
  filter chains as above; it forwards to the application on <loopback>:<target port> (cluster
  `inbound|<target port>||`), so the application must listen on loopback only.
Binding ports below 1024 needs CAP_NET_BIND_SERVICE for Envoy's user, as in Istio.

Client certificates, as Istio's sidecars handle them: inbound HTTP connection managers append the
caller's certificate details (subject, URI and DNS SANs) to `x-forwarded-client-cert` and forward
it (APPEND_FORWARD), so the application sees the caller's SPIFFE identity when the connection was
mesh mTLS; outbound ones keep Envoy's default, SANITIZE, which drops the header an application
sends, so a workload cannot forge the identity of its callers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import wrappers_pb2

from controlplane.model.meshconfig import OutboundPolicy
from controlplane.model.registry import MeshSnapshot, UpdateKind
from controlplane.model.security import MtlsMode
from controlplane.model.services import SIDECAR_LISTENER_PORTS, Protocol, Service, precedence
from discovery.cache import Resource, ResourceGroup, XdsCache
from discovery.connection import Watched
from discovery.generators import common as c
from discovery.generators.base import GenContext, Generated, InboundPort, ProxyView, only
from discovery.generators.cds import outbound_ports
from discovery.proxy import InterceptionMode
from discovery.pushqueue import PushRequest
from discovery.xdstypes import LISTENER

RESERVED_PORTS = frozenset(range(15000, 15091))  # Envoy admin, 15001, 15006, 15020/15021, 15090


def _listener_filters(*names: str) -> list[lc.ListenerFilter]:
    configs = {
        "envoy.filters.listener.original_dst": original_dst_pb2.OriginalDst(),
        "envoy.filters.listener.tls_inspector": tls_inspector_pb2.TlsInspector(),
    }
    return [lc.ListenerFilter(name=n, typed_config=c.typed(configs[n])) for n in names]


def _outbound_http(port: int, *, stat_prefix: str) -> lc.FilterChain:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=c.ads(), route_config_name=str(port)),
        http_filters=[c.router_filter()],
    )
    return lc.FilterChain(name=f"{stat_prefix}_http", filters=[c.hcm_filter(manager)])


def _tcp_chain(cluster: str, *, name: str, stat_prefix: str) -> lc.FilterChain:
    return lc.FilterChain(name=name, filters=[c.tcp_proxy(stat_prefix=stat_prefix, cluster=cluster)])


def _passthrough_cluster(snapshot: MeshSnapshot) -> str:
    return c.PASSTHROUGH if snapshot.mesh.outbound_policy is OutboundPolicy.ALLOW_ANY else c.BLACKHOLE


def _ports(snapshot: MeshSnapshot) -> dict[int, list[tuple[Service, Protocol]]]:
    by_port: dict[int, list[tuple[Service, Protocol]]] = {}
    for service in snapshot.services.values():
        for port in outbound_ports(service):
            by_port.setdefault(port.port, []).append((service, port.protocol))
    return by_port


def redirect_outbound(snapshot: MeshSnapshot) -> list[listener_pb2.Listener]:
    passthrough = _passthrough_cluster(snapshot)
    listeners = [
        listener_pb2.Listener(
            name=c.VIRTUAL_OUTBOUND,
            address=c.socket_address("0.0.0.0", c.OUTBOUND_PORT),
            use_original_dst=wrappers_pb2.BoolValue(value=True),
            traffic_direction=base_pb2.OUTBOUND,
            filter_chains=[_tcp_chain(passthrough, name="PassthroughFilterChain", stat_prefix=passthrough)],
        )
    ]
    for port, entries in sorted(_ports(snapshot).items()):
        if port not in SIDECAR_LISTENER_PORTS and any(protocol.is_http for _, protocol in entries):
            name = f"0.0.0.0_{port}"
            listeners.append(
                listener_pb2.Listener(
                    name=name,
                    address=c.socket_address("0.0.0.0", port),
                    bind_to_port=_false(),
                    traffic_direction=base_pb2.OUTBOUND,
                    filter_chains=[_outbound_http(port, stat_prefix=f"outbound_{name}")],
                )
            )
        for service, protocol in entries:
            address = service.cluster_ip
            if protocol.is_http or address is None or not snapshot.conflicts.owns_address(service, port):
                continue
            name = f"{address}_{port}"
            cluster = c.outbound_cluster(port, service.hostname)
            listeners.append(
                listener_pb2.Listener(
                    name=name,
                    address=c.socket_address(address, port),
                    bind_to_port=_false(),
                    traffic_direction=base_pb2.OUTBOUND,
                    filter_chains=[_tcp_chain(cluster, name=cluster, stat_prefix=cluster)],
                )
            )
    return listeners


def none_outbound(snapshot: MeshSnapshot, excluded: frozenset[int], *, loopback: str) -> list[listener_pb2.Listener]:
    listeners = []
    for port, entries in sorted(_ports(snapshot).items()):
        if port in excluded or port in RESERVED_PORTS:
            continue
        name = f"{loopback}_{port}"
        if any(protocol.is_http for _, protocol in entries):
            chain = _outbound_http(port, stat_prefix=f"outbound_{name}")
        else:
            service = min((s for s, _ in entries), key=precedence)
            cluster = c.outbound_cluster(port, service.hostname)
            chain = _tcp_chain(cluster, name=cluster, stat_prefix=cluster)
        listeners.append(
            listener_pb2.Listener(
                name=name,
                address=c.socket_address(loopback, port),
                traffic_direction=base_pb2.OUTBOUND,
                filter_chains=[chain],
            )
        )
    return listeners


def _inbound_filters(port: InboundPort) -> list[lc.Filter]:
    cluster = c.inbound_cluster(port.port)
    if not port.protocol.is_http:
        return [c.tcp_proxy(stat_prefix=cluster, cluster=cluster)]
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"inbound_0.0.0.0_{port.port}",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.APPEND_FORWARD,
        set_current_client_cert_details=hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(
            subject=wrappers_pb2.BoolValue(value=True), dns=True, uri=True
        ),
        route_config=route_pb2.RouteConfiguration(
            name=cluster,
            validate_clusters=_false(),
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=f"inbound|http|{port.port}",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            name="default",
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=route_components_pb2.RouteAction(cluster=cluster, timeout=c.duration(0)),
                        )
                    ],
                )
            ],
        ),
        http_filters=[c.router_filter()],
    )
    return [c.hcm_filter(manager)]


def _mode_chains(*, name: str, filters: list[lc.Filter], mode: MtlsMode, port: int | None) -> list[lc.FilterChain]:
    """Filter chains for one port (or, with port None, for any port) under an mTLS mode."""
    port_kw = {"destination_port": _u32(port)} if port is not None else {}
    mtls = lc.FilterChain(
        name=f"{name}_mtls",
        filter_chain_match=lc.FilterChainMatch(transport_protocol="tls", **port_kw),
        transport_socket=c.downstream_mtls(),
        filters=filters,
    )
    if mode is MtlsMode.STRICT:
        return [mtls]
    if mode is MtlsMode.DISABLE:
        return [lc.FilterChain(name=name, filter_chain_match=lc.FilterChainMatch(**port_kw), filters=filters)]
    plain = lc.FilterChain(
        name=f"{name}_plaintext",
        filter_chain_match=lc.FilterChainMatch(transport_protocol="raw_buffer", **port_kw),
        filters=filters,
    )
    return [mtls, plain]


def virtual_inbound(view: ProxyView) -> listener_pb2.Listener:
    chains: list[lc.FilterChain] = []
    for port in view.inbound:
        chains += _mode_chains(
            name=c.inbound_cluster(port.port), filters=_inbound_filters(port), mode=port.mode, port=port.port
        )
    passthrough = [c.tcp_proxy(stat_prefix=c.INBOUND_PASSTHROUGH, cluster=c.INBOUND_PASSTHROUGH)]
    chains += _mode_chains(name=c.VIRTUAL_INBOUND, filters=passthrough, mode=view.default_mode, port=None)
    return listener_pb2.Listener(
        name=c.VIRTUAL_INBOUND,
        address=c.socket_address("0.0.0.0", c.INBOUND_PORT),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=_listener_filters(
            "envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"
        ),
        filter_chains=chains,
    )


def none_inbound(view: ProxyView) -> list[listener_pb2.Listener]:
    listeners = []
    for port in view.inbound:
        name = f"{view.proxy.ip}_{port.port}"
        listeners.append(
            listener_pb2.Listener(
                name=name,
                address=c.socket_address(view.proxy.ip, port.port),
                traffic_direction=base_pb2.INBOUND,
                listener_filters=_listener_filters("envoy.filters.listener.tls_inspector"),
                filter_chains=_mode_chains(
                    name=c.inbound_cluster(port.port), filters=_inbound_filters(port), mode=port.mode, port=None
                ),
            )
        )
    return listeners


def _false() -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=False)


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def _cached(
    cache: XdsCache, listeners: Iterable[listener_pb2.Listener], *, key: Hashable, variant: Hashable = None
) -> list[Resource]:
    return [
        cache.resource(LISTENER, lst.name, key=key, variant=variant, build=lambda lst=lst: lst)  # type: ignore[misc]
        for lst in listeners
    ]


class ListenerGenerator:
    type_url = LISTENER

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        if request.has(UpdateKind.SERVICE, UpdateKind.MESH, UpdateKind.POLICY) or (
            request.full and not request.updates
        ):
            return True
        return bool(request.of_kind(UpdateKind.WORKLOAD) & set(view.proxy.ip_addresses))

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        snap, cache, view = ctx.snapshot, ctx.cache, ctx.view
        versions = (snap.services_version, snap.mesh_version)
        if view.mode is InterceptionMode.NONE:
            excluded = frozenset(p.port for p in view.inbound)
            loopback = view.proxy.loopback
            outbound = cache.group(
                ("lds-none-out", versions, excluded, loopback),
                lambda: _cached(
                    cache, none_outbound(snap, excluded, loopback=loopback), key=versions, variant=(excluded, loopback)
                ),
            )
            inbound_key = (view.inbound_key, view.proxy.ip)
            inbound = cache.group(
                ("lds-none-in", inbound_key),
                lambda: _cached(cache, none_inbound(view), key=inbound_key),
            )
        else:
            outbound = cache.group(
                ("lds-redirect-out", versions),
                lambda: _cached(cache, redirect_outbound(snap), key=versions),
            )
            inbound = cache.group(
                ("lds-redirect-in", view.inbound_key),
                lambda: [
                    cache.resource(
                        LISTENER,
                        c.VIRTUAL_INBOUND,
                        key=view.inbound_key,
                        variant=view.inbound_key,
                        build=lambda: virtual_inbound(view),
                    )
                ],
            )
        groups: tuple[ResourceGroup, ...] = (outbound, inbound)
        if not watched.wildcard:
            groups = tuple(only(g, watched.names) for g in groups)
        return Generated(groups=groups, names=frozenset(r.name for g in groups for r in g.resources))


GENERATOR = ListenerGenerator()
