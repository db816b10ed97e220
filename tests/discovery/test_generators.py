"""Generators: what each proxy is sent, built from a registry over config objects (no transport)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from discovery.connection import Watched
from discovery.generators import GRPC, SIDECAR, GenContext, ProxyView
from discovery.proxy import Proxy
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.world import World, proxy

WEB = "outbound|80||web.default.svc.cluster.local"


def base_world(*extra: Mapping[str, Any]) -> World:
    return World(
        m.service("web", cluster_ip="10.96.0.1"),
        m.pod("web-1", "10.1.0.1", app="web", sa="web-sa", ports={"http": 8080}),
        m.pod("web-2", "10.1.0.2", app="web", sa="web-sa", sidecar=False),
        m.endpoint_slice("web", ips=["10.1.0.1", "10.1.0.2"], zone="zone-a"),
        *extra,
    )


def test_outbound_cluster_uses_mtls_only_for_endpoints_with_a_sidecar() -> None:
    world = base_world()
    cluster = world.generate(proxy(), CLUSTER)[WEB]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert cluster.type == cluster_pb2.Cluster.EDS and cluster.eds_cluster_config.eds_config.HasField("ads")
    (istio,) = cluster.transport_socket_matches
    assert dict(istio.match) == {"tlsMode": "istio"}
    assert not cluster.HasField("transport_socket")  # any other endpoint: Envoy's default, plaintext
    tls = tls_pb2.UpstreamTlsContext()
    istio.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "outbound_.80_._.web.default.svc.cluster.local"
    common = tls.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    sds_cluster = common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source.grpc_services[0]
    assert sds_cluster.envoy_grpc.cluster_name == "sds-grpc"
    sans = [
        s.matcher.exact
        for s in common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    ]
    assert sans == ["spiffe://cluster.local/ns/default/sa/web-sa"]

    cla = world.generate(proxy(), ENDPOINT, [WEB])[WEB]
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    (locality,) = cla.endpoints
    assert locality.locality.zone == "zone-a"
    by_ip = {e.endpoint.address.socket_address.address: e for e in locality.lb_endpoints}
    assert json_format.MessageToDict(by_ip["10.1.0.1"].metadata) == {
        "filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}
    }
    assert not by_ip["10.1.0.2"].HasField("metadata")


@pytest.mark.parametrize(("mode", "mtls"), [("DISABLE", False), ("PERMISSIVE", True), ("STRICT", True)])
def test_auto_mtls_sends_plaintext_to_a_destination_whose_policy_is_disable(mode: str, mtls: bool) -> None:
    world = base_world()
    world.apply(m.peer_authentication("web", "default", mode, selector={"app": "web"}))
    cluster = world.generate(proxy(), CLUSTER)[WEB]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert bool(cluster.transport_socket_matches) is mtls


def test_a_policy_change_reaches_cached_outbound_clusters() -> None:
    world = base_world()
    assert world.generate(proxy(), CLUSTER)[WEB].transport_socket_matches  # type: ignore[union-attr]
    world.apply(m.peer_authentication("web", "default", "DISABLE", selector={"app": "web"}))
    assert not world.generate(proxy(), CLUSTER)[WEB].transport_socket_matches  # type: ignore[union-attr]


def test_mesh_config_can_turn_auto_mtls_off() -> None:
    world = base_world(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "enableAutoMtls: false\n"},
        }
    )
    cluster = world.generate(proxy(), CLUSTER)[WEB]
    assert isinstance(cluster, cluster_pb2.Cluster) and list(cluster.transport_socket_matches) == []


def inbound_chains(world: World, p: Proxy) -> dict[str, listener_pb2.FilterChain]:
    listener = world.generate(p, LISTENER)["virtualInbound"]
    assert isinstance(listener, listener_pb2.Listener)
    return {fc.name: fc for fc in listener.filter_chains}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("STRICT", {"inbound|8080||_mtls"}),
        ("PERMISSIVE", {"inbound|8080||_mtls", "inbound|8080||_plaintext"}),
        ("DISABLE", {"inbound|8080||"}),
    ],
)
def test_virtual_inbound_chains_follow_peer_authentication(mode: str, expected: set[str]) -> None:
    world = base_world(m.peer_authentication("policy", "default", mode, selector={"app": "web"}))
    chains = inbound_chains(world, proxy())
    port_chains = {name for name in chains if name.startswith("inbound|8080||")}
    assert port_chains == expected
    for name in port_chains:
        match = chains[name].filter_chain_match
        assert match.destination_port.value == 8080
        assert chains[name].HasField("transport_socket") == name.endswith("_mtls")
        expected_protocol = "tls" if name.endswith("_mtls") else "raw_buffer" if name.endswith("_plaintext") else ""
        assert match.transport_protocol == expected_protocol


def test_mesh_wide_strict_applies_to_unknown_ports_and_a_workload_policy_overrides_a_port() -> None:
    world = base_world(m.peer_authentication("mesh", "istio-system", "STRICT"))
    chains = inbound_chains(world, proxy())
    assert {"virtualInbound_mtls", "inbound|8080||_mtls"} <= set(chains)
    assert "virtualInbound_plaintext" not in chains
    policy = m.peer_authentication("web", "default", "UNSET", selector={"app": "web"})
    policy["spec"]["portLevelMtls"] = {8080: {"mode": "DISABLE"}}
    world.apply(policy)
    chains = inbound_chains(world, proxy())
    assert "inbound|8080||" in chains and "virtualInbound_mtls" in chains


def test_none_mode_binds_loopback_outbound_and_pod_address_inbound() -> None:
    world = base_world(m.service("db", port=5432, port_name="tcp", cluster_ip="10.96.0.5"))
    listeners = world.generate(proxy(INTERCEPTION_MODE="NONE"), LISTENER)
    assert set(listeners) == {"127.0.0.1_80", "127.0.0.1_5432", "10.1.0.1_8080"}
    outbound = listeners["127.0.0.1_80"]
    assert isinstance(outbound, listener_pb2.Listener)
    assert outbound.address.socket_address.address == "127.0.0.1" and not outbound.HasField("bind_to_port")
    inbound = listeners["10.1.0.1_8080"]
    assert isinstance(inbound, listener_pb2.Listener)
    assert inbound.address.socket_address.port_value == 8080


def test_none_mode_skips_outbound_ports_the_workload_serves() -> None:
    world = base_world(m.service("other", port=8080, cluster_ip="10.96.0.6"))
    listeners = world.generate(proxy(INTERCEPTION_MODE="NONE"), LISTENER)
    assert "127.0.0.1_8080" not in listeners and "10.1.0.1_8080" in listeners


def test_redirect_mode_tcp_service_gets_a_cluster_ip_listener() -> None:
    world = base_world(m.service("db", port=5432, port_name="tcp", cluster_ip="10.96.0.5"))
    listeners = world.generate(proxy(), LISTENER)
    db = listeners["10.96.0.5_5432"]
    assert isinstance(db, listener_pb2.Listener)
    assert db.bind_to_port.value is False
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_80"} <= set(listeners)


def test_short_name_domains_only_for_proxies_in_the_same_namespace() -> None:
    world = base_world()
    here = world.generate(proxy(), ROUTE, ["80"])["80"]
    there = world.generate(proxy(pod="x", ns="other", ip="10.9.0.1"), ROUTE, ["80"])["80"]
    assert isinstance(here, route_pb2.RouteConfiguration) and isinstance(there, route_pb2.RouteConfiguration)
    assert "web" in here.virtual_hosts[0].domains and "web" not in there.virtual_hosts[0].domains
    assert here.virtual_hosts[-1].name == "allow_any"


def test_sidecar_domains_carry_no_port_and_envoy_is_told_to_ignore_the_hosts_port() -> None:
    route = base_world().generate(proxy(), ROUTE, ["80"])["80"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    assert route.ignore_port_in_host_matching  # `web:80` matches the domain `web`
    domains = list(route.virtual_hosts[0].domains)
    assert domains[:4] == ["web.default.svc.cluster.local", "web.default.svc", "web.default", "web"]
    assert not [d for d in domains if ":" in d]


def test_service_routes_retry_another_host_as_istio_does_by_default() -> None:
    route = base_world().generate(proxy(), ROUTE, ["80"])["80"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    policy = route.virtual_hosts[0].routes[0].route.retry_policy
    assert policy.retry_on == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    assert policy.num_retries.value == 2
    assert [p.name for p in policy.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    assert policy.host_selection_retry_max_attempts == 5
    passthrough = route.virtual_hosts[-1].routes[0].route
    assert not passthrough.HasField("retry_policy")  # unknown hosts are passed through untouched


def test_registry_only_routes_unknown_hosts_to_a_502() -> None:
    world = base_world(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"},
        }
    )
    route = world.generate(proxy(), ROUTE, ["80"])["80"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    assert route.virtual_hosts[-1].routes[0].direct_response.status == 502


def test_grpc_generator_answers_exactly_the_requested_names() -> None:
    world = base_world()
    client = proxy(pod="c", ip="10.5.0.1", GENERATOR="grpc")
    names = ["web.default.svc.cluster.local:80", "web:80", "missing.default.svc.cluster.local:80", "web:81"]
    listeners = world.generate(client, LISTENER, names, table=GRPC)
    assert set(listeners) == {"web.default.svc.cluster.local:80", "web:80"}
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener = listeners["web:80"]
    assert isinstance(listener, listener_pb2.Listener)
    listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "web:80" and hcm.rds.config_source.HasField("ads")
    route = world.generate(client, ROUTE, ["web:80"], table=GRPC)["web:80"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    assert "web:80" in route.virtual_hosts[0].domains and route.virtual_hosts[0].routes[0].route.cluster == WEB
    clusters = world.generate(client, CLUSTER, [WEB, "outbound|81||web.default.svc.cluster.local"], table=GRPC)
    assert list(clusters) == [WEB]
    cluster = clusters[WEB]
    assert isinstance(cluster, cluster_pb2.Cluster) and not cluster.transport_socket_matches


def test_proxies_with_the_same_view_share_generated_bytes() -> None:
    world = base_world(m.pod("web-3", "10.1.0.3", app="web", sa="web-sa"))
    snapshot = world.registry.snapshot()
    watched = Watched(type_url=CLUSTER, wildcard=True)
    groups = []
    for pod, ip in (("web-1", "10.1.0.1"), ("web-3", "10.1.0.3"), ("web-1", "10.1.0.1")):
        ctx = GenContext(snapshot=snapshot, view=ProxyView.build(proxy(pod=pod, ip=ip), snapshot), cache=world.cache)
        groups.append(SIDECAR[CLUSTER].generate(ctx, watched).groups)
    # kept from the second proxy that asks (the first proxy's could be a view no one shares), shared after
    assert all(a is b for a, b in zip(groups[1], groups[2], strict=True))
    assert [a.blob for a in groups[0]] == [b.blob for b in groups[1]]


def test_none_mode_binds_and_forwards_on_the_proxys_loopback_address() -> None:
    world = base_world(m.service("db", port=5432, port_name="tcp", cluster_ip="10.96.0.5"))
    p = proxy(INTERCEPTION_MODE="NONE", LOOPBACK_ADDRESS="127.0.1.7")
    listeners = world.generate(p, LISTENER)
    assert set(listeners) == {"127.0.1.7_80", "127.0.1.7_5432", "10.1.0.1_8080"}
    for name in ("127.0.1.7_80", "127.0.1.7_5432"):
        address = listeners[name].address.socket_address  # type: ignore[attr-defined]
        assert (address.address, f"{address.address}_{address.port_value}") == ("127.0.1.7", name)
    assert inbound_endpoint(world, p) == ("127.0.1.7", 8080)


def inbound_endpoint(world: World, p: Proxy, port: int = 8080) -> tuple[str, int]:
    cluster = world.generate(p, CLUSTER)[f"inbound|{port}||"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    (locality,) = cluster.load_assignment.endpoints
    (endpoint,) = locality.lb_endpoints
    address = endpoint.endpoint.address.socket_address
    return address.address, address.port_value


def test_proxies_with_different_loopback_addresses_never_share_cached_resources() -> None:
    world = base_world(m.pod("web-3", "10.1.0.3", app="web", sa="web-sa", ports={"http": 8080}))
    first = proxy(INTERCEPTION_MODE="NONE", LOOPBACK_ADDRESS="127.0.1.1")
    second = proxy(pod="web-3", ip="10.1.0.3", INTERCEPTION_MODE="NONE", LOOPBACK_ADDRESS="127.0.1.3")
    default = proxy(pod="web-3", ip="10.1.0.3", INTERCEPTION_MODE="NONE")
    for _ in range(2):  # the second round is served from the cache
        assert inbound_endpoint(world, first) == ("127.0.1.1", 8080)
        assert inbound_endpoint(world, second) == ("127.0.1.3", 8080)
        assert inbound_endpoint(world, default) == ("127.0.0.1", 8080)
        assert "127.0.1.1_80" in world.generate(first, LISTENER)
        assert "127.0.1.3_80" in world.generate(second, LISTENER)
        assert "127.0.0.1_80" in world.generate(default, LISTENER)


def test_redirect_mode_ignores_the_loopback_address() -> None:
    world = base_world()
    p = proxy(LOOPBACK_ADDRESS="127.0.1.9")
    assert inbound_endpoint(world, p) == ("127.0.0.1", 8080)
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_80"} == set(world.generate(p, LISTENER))


def hcms(listener: Message) -> list[http_connection_manager_pb2.HttpConnectionManager]:
    assert isinstance(listener, listener_pb2.Listener)
    out = []
    for chain in listener.filter_chains:
        for flt in chain.filters:
            if flt.name == "envoy.filters.network.http_connection_manager":
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(hcm)
                out.append(hcm)
    return out


@pytest.mark.parametrize(("mode", "inbound"), [("REDIRECT", "virtualInbound"), ("NONE", "10.1.0.1_8080")])
def test_inbound_http_forwards_the_callers_certificate_and_outbound_sanitizes(mode: str, inbound: str) -> None:
    world = base_world()
    listeners = world.generate(proxy(INTERCEPTION_MODE=mode), LISTENER)
    managers = hcms(listeners[inbound])
    assert managers  # the HTTP port 8080 has an HTTP connection manager per filter chain
    hcm_type = http_connection_manager_pb2.HttpConnectionManager
    for hcm in managers:
        assert hcm.forward_client_cert_details == hcm_type.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        assert (details.subject.value, details.uri, details.dns, details.cert, details.chain) == (
            True,
            True,
            True,
            False,
            False,
        )
    outbound = "0.0.0.0_80" if mode == "REDIRECT" else "127.0.0.1_80"
    (out_hcm,) = hcms(listeners[outbound])
    assert out_hcm.forward_client_cert_details == hcm_type.SANITIZE
    assert not out_hcm.HasField("set_current_client_cert_details")
