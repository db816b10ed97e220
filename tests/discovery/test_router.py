"""Routers (gateway pods, node type `router`): outbound clusters and endpoints, no inbound side, no listeners.

Generator level first (what a router is sent, next to what a sidecar on the same pod would be sent),
then over real SotW and Delta ADS streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from discovery.generators import GRPC, ROUTER, SIDECAR, table_for
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import XdsHarness, cluster_names, node, web_alone
from tests.discovery.world import World, proxy

NS = "istio-system"
GATEWAY_IP = "10.2.0.1"
WEB = "outbound|80||web.default.svc.cluster.local"
INGRESS = f"outbound|80||istio-ingressgateway.{NS}.svc.cluster.local"


def gateway_world() -> World:
    """A web service with one sidecar endpoint, and an ingress gateway pod selected by its own service."""
    return World(
        m.service("web", cluster_ip="10.96.0.1"),
        m.pod("web-1", "10.1.0.1", app="web", sa="web-sa"),
        m.endpoint_slice("web", ips=["10.1.0.1"]),
        m.service("istio-ingressgateway", NS, app="istio-ingressgateway", cluster_ip="10.96.0.100"),
        m.pod(
            "ingress-1", GATEWAY_IP, NS, app="istio-ingressgateway", sa="ingress", sidecar=False, ports={"http": 8080}
        ),
        m.endpoint_slice("istio-ingressgateway", NS, ips=[GATEWAY_IP]),
    )


def router(**metadata: str) -> object:
    return proxy(pod="ingress-1", ip=GATEWAY_IP, ns=NS, node_type="router", **metadata)


@pytest.mark.parametrize(
    ("node_type", "metadata", "expected"),
    [
        ("router", {}, ROUTER),
        ("router", {"INTERCEPTION_MODE": "NONE"}, ROUTER),
        ("sidecar", {}, SIDECAR),
        ("sidecar", {"GENERATOR": "grpc"}, GRPC),
        ("sidecar", {"GENERATOR": "unknown"}, SIDECAR),
        ("router", {"GENERATOR": "unknown"}, ROUTER),
    ],
)
def test_the_node_type_picks_the_generator_table(node_type: str, metadata: dict[str, str], expected: object) -> None:
    assert table_for(proxy(node_type=node_type, **metadata)) is expected


def test_a_router_gets_every_outbound_cluster_and_blackhole_but_no_inbound_or_passthrough() -> None:
    world = gateway_world()
    sidecar = world.generate(proxy(pod="ingress-1", ip=GATEWAY_IP, ns=NS), CLUSTER)
    clusters = world.generate(router(), CLUSTER)
    assert "inbound|8080||" in sidecar  # the same pod as a sidecar would serve its port
    assert set(clusters) == {WEB, INGRESS, "BlackHoleCluster"}
    web = clusters[WEB]
    assert isinstance(web, cluster_pb2.Cluster) and web == sidecar[WEB]
    assert [t.name for t in web.transport_socket_matches] == ["tlsMode-istio"]  # auto mTLS


@pytest.mark.parametrize("mode", ["REDIRECT", "NONE", "TPROXY"])
def test_a_router_gets_no_listeners_and_no_routes_whatever_its_interception_mode(mode: str) -> None:
    world = gateway_world()
    assert world.generate(router(INTERCEPTION_MODE=mode), LISTENER) == {}
    assert world.generate(router(INTERCEPTION_MODE=mode), ROUTE, ["80", "http.80"]) == {}


def test_a_router_gets_the_same_endpoints_as_a_sidecar() -> None:
    world = gateway_world()
    cla = world.generate(router(), ENDPOINT, [WEB])[WEB]
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    assert cla == world.generate(proxy(), ENDPOINT, [WEB])[WEB]
    assert [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints] == ["10.1.0.1"]


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_alone() as harness:
        yield harness


def router_node() -> object:
    return node(pod="ingress-1", ns=NS, ip=GATEWAY_IP, node_type="router")


async def test_sotw_router_gets_an_empty_listener_set_and_is_not_pushed_listeners_on_changes(xds: XdsHarness) -> None:
    client = xds.sotw(router_node())  # type: ignore[arg-type]
    await client.request(CLUSTER)
    cds = await client.recv()
    assert cluster_names(cds) == {WEB, "BlackHoleCluster"}
    await client.ack(cds)
    await client.request(ENDPOINT, [WEB])
    eds = await client.recv()
    assert eds.type_url == ENDPOINT and len(eds.resources) == 1
    await client.ack(eds, [WEB])
    await client.request(LISTENER)
    lds = await client.recv()
    assert lds.type_url == LISTENER and list(lds.resources) == [] and lds.nonce
    await client.ack(lds)

    # a push runs CDS, EDS, LDS in order: a listener push after the first change would come before the second
    # CDS (no EDS: the new service's cluster is not subscribed yet, and web's assignment did not change)
    xds.apply(m.service("shop", cluster_ip=None))
    pushed = await client.recv()
    assert pushed.type_url == CLUSTER
    assert "outbound|80||shop.default.svc.cluster.local" in cluster_names(pushed)
    await client.ack(pushed)
    xds.apply(m.service("cart", cluster_ip=None))
    after = await client.recv()
    assert after.type_url == CLUSTER and "outbound|80||cart.default.svc.cluster.local" in cluster_names(after)
    await client.close()


async def test_delta_router_gets_an_empty_listener_answer_and_clusters_without_inbound(xds: XdsHarness) -> None:
    client = xds.delta(router_node())  # type: ignore[arg-type]
    await client.request(CLUSTER)
    cds = await client.recv()
    assert {r.name for r in cds.resources} == {WEB, "BlackHoleCluster"}
    await client.ack(cds)
    await client.request(LISTENER)
    lds = await client.recv()
    assert lds.type_url == LISTENER and list(lds.resources) == [] and list(lds.removed_resources) == []
    await client.ack(lds)
    await client.request(ROUTE, subscribe=["80"])
    rds = await client.recv()
    assert list(rds.resources) == [] and list(rds.removed_resources) == ["80"]
    await client.close()
