"""State-of-the-World ADS over a real gRPC stream: nonces, ACK/NACK, subscriptions, pushes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from discovery import metrics
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import API, WEB, XdsHarness, node, web_and_api


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_and_api(web_ips=["10.1.0.1", "10.1.0.2"]) as harness:
        yield harness


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def names(response: object, message: type) -> list[str]:
    out = []
    for res in response.resources:  # type: ignore[attr-defined]
        msg = message()
        res.Unpack(msg)
        out.append(msg.cluster_name if isinstance(msg, endpoint_pb2.ClusterLoadAssignment) else msg.name)
    return out


async def test_cds_is_wildcard_and_carries_every_cluster(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(CLUSTER)
    response = await client.recv()
    assert response.type_url == CLUSTER and response.nonce and response.version_info
    got = names(response, cluster_pb2.Cluster)
    assert {WEB, API, "BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster"} <= set(got)


async def test_eds_answers_exactly_the_requested_clusters(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB])
    response = await client.recv()
    (cla,) = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value) for r in response.resources]
    assert cla.cluster_name == WEB
    assert sorted(e.endpoint.address.socket_address.address for loc in cla.endpoints for e in loc.lb_endpoints) == [
        "10.1.0.1",
        "10.1.0.2",
    ]


async def test_ack_gets_no_answer_and_a_stale_nonce_is_ignored(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB])
    first = await client.recv()
    await client.ack(first, [WEB])  # ACK: no response
    await client.request(ENDPOINT, [WEB, API], nonce="not-a-nonce-we-sent")  # stale: ignored
    await client.request(ROUTE, ["80"])  # answered: proves the two above produced nothing
    nxt = await client.recv()
    assert nxt.type_url == ROUTE
    await client.request(ENDPOINT, [WEB, API], nonce=first.nonce, version=first.version_info)  # names changed
    changed = await client.recv()
    # SotW EDS is not a wildcard type: the client keeps WEB's assignment, so only API's is sent
    assert changed.type_url == ENDPOINT and names(changed, endpoint_pb2.ClusterLoadAssignment) == [API]


async def test_a_reconnected_eds_subscription_gets_every_assignment_again(xds: XdsHarness) -> None:
    first = xds.sotw()
    await first.request(ENDPOINT, [WEB])
    await first.ack(await first.recv(), [WEB])
    await first.close()
    client = xds.sotw()  # a new stream: the client's cache is no evidence of what this stream sent
    await client.request(ENDPOINT, [WEB, API], version="1")
    response = await client.recv()
    assert sorted(names(response, endpoint_pb2.ClusterLoadAssignment)) == [API, WEB]


async def test_a_grown_rds_subscription_is_answered_with_the_added_route_configuration(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ROUTE, ["80"])
    await client.ack(await client.recv(), ["80"])
    xds.apply(m.service("late", cluster_ip="10.96.0.9", port=8123))  # a new HTTP port: a new route name
    pushed = await client.recv()
    assert names(pushed, route_pb2.RouteConfiguration) == ["80"]  # services changed: what it watches is re-sent
    await client.request(ROUTE, ["80", "8123"], nonce=pushed.nonce, version=pushed.version_info)
    grown = await client.recv()
    (route,) = [route_pb2.RouteConfiguration.FromString(r.value) for r in grown.resources]
    assert route.name == "8123" and "late.default.svc.cluster.local:8123" in [v.name for v in route.virtual_hosts]
    await client.request(ROUTE, ["80", "8123"])  # no nonce: the client lost what it had, and gets both
    assert sorted(names(await client.recv(), route_pb2.RouteConfiguration)) == ["80", "8123"]


async def test_a_request_without_a_nonce_for_more_assignments_gets_all_of_them(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB])
    await client.ack(await client.recv(), [WEB])
    await client.request(ENDPOINT, [WEB, API])  # no nonce on a live stream: the client lost what it had
    response = await client.recv()
    assert sorted(names(response, endpoint_pb2.ClusterLoadAssignment)) == [API, WEB]


async def test_a_shrunk_eds_subscription_is_answered_with_what_is_left(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB, API])
    first = await client.recv()
    await client.request(ENDPOINT, [WEB], nonce=first.nonce, version=first.version_info)
    response = await client.recv()
    assert names(response, endpoint_pb2.ClusterLoadAssignment) == [WEB]


async def test_nack_keeps_state_is_not_retried_and_shows_in_status_and_metrics(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(LISTENER)
    response = await client.recv()
    before = metrics.rejects.get("lds")
    await client.request(LISTENER, nonce=response.nonce, version="", error="listener 0.0.0.0_80: bad thing")
    await client.request(ROUTE, ["80"])
    nxt = await client.recv()
    assert nxt.type_url == ROUTE  # nothing was re-sent for LDS in between
    assert metrics.rejects.get("lds") == before + 1
    (status,) = xds.service.syncz()
    assert status["types"]["LDS"]["status"] == "NACKED"
    assert "bad thing" in status["types"]["LDS"]["error"]
    assert status["types"]["RDS"]["status"] == "STALE"
    await client.ack(nxt, ["80"])
    xds.apply(m.service("new", cluster_ip="10.96.0.3"))  # a later change is pushed as usual
    pushed = [await client.recv() for _ in range(2)]
    assert [r.type_url for r in pushed] == [LISTENER, ROUTE]
    await client.ack(pushed[0])
    await client.ack(pushed[1], ["80"])
    await client.request(CLUSTER)
    await client.recv()
    (status,) = xds.service.syncz()
    assert status["types"]["LDS"]["status"] == "SYNCED" and status["types"]["LDS"]["error"] is None


async def test_endpoint_change_pushes_eds_only_to_subscribers_of_that_cluster(xds: XdsHarness) -> None:
    web_watcher = xds.sotw(node(pod="a", ip="10.2.0.1"))
    api_watcher = xds.sotw(node(pod="b", ip="10.2.0.2"))
    await web_watcher.request(ENDPOINT, [WEB])
    await web_watcher.ack(await web_watcher.recv(), [WEB])
    await api_watcher.request(ENDPOINT, [API])
    await api_watcher.ack(await api_watcher.recv(), [API])
    xds.apply(m.endpoint_slice("web", ips=["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    pushed = await web_watcher.recv()
    assert pushed.type_url == ENDPOINT and names(pushed, endpoint_pb2.ClusterLoadAssignment) == [WEB]
    await api_watcher.request(ROUTE, ["80"])
    assert (await api_watcher.recv()).type_url == ROUTE  # api's watcher got no EDS push first


async def test_service_change_pushes_cds_eds_lds_rds_in_order(xds: XdsHarness) -> None:
    client = xds.sotw()
    for type_url, subscription in ((CLUSTER, []), (ENDPOINT, [WEB]), (LISTENER, []), (ROUTE, ["80"])):
        await client.request(type_url, subscription)
        await client.ack(await client.recv(), subscription)
    # A subscribed service (its assignment is pushed too) gains a TCP port (a new listener).
    ports = [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "tcp-db", "port": 5432, "targetPort": 5432}]
    xds.apply(m.service("web", cluster_ip="10.96.0.9", ports=ports))
    order = [(await client.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


async def test_a_push_does_not_repeat_a_wildcard_type_the_client_has(xds: XdsHarness) -> None:
    client = xds.sotw()
    for type_url, subscription in ((CLUSTER, []), (LISTENER, []), (ROUTE, ["80"])):
        await client.request(type_url, subscription)
        await client.ack(await client.recv(), subscription)
    before = metrics.unchanged.get("lds")
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))  # HTTP on port 80: the listener 0.0.0.0_80 is as it was
    pushed = [await client.recv() for _ in range(2)]
    assert [r.type_url for r in pushed] == [CLUSTER, ROUTE]
    assert metrics.unchanged.get("lds") == before + 1
    for response, subscription in zip(pushed, ([], ["80"]), strict=True):
        await client.ack(response, subscription)
    await client.request(ENDPOINT, [WEB])  # answered after the ACKs before it were handled
    await client.recv()
    (status,) = xds.service.syncz()  # proxy status compares nonces: the skipped LDS is still in sync
    assert {t: status["types"][t]["status"] for t in ("CDS", "LDS", "RDS")} == dict.fromkeys(
        ("CDS", "LDS", "RDS"), "SYNCED"
    )
    xds.apply(m.service("db", cluster_ip="10.96.0.8", port=5432, port_name="tcp"))  # a new TCP listener: sent
    pushed = [await client.recv() for _ in range(3)]
    assert [r.type_url for r in pushed] == [CLUSTER, LISTENER, ROUTE]
    assert "10.96.0.8_5432" in names(pushed[1], listener_pb2.Listener)
    # The client asking again (no nonce: it lost its state) is answered, though nothing changed.
    await client.ack(pushed[0])
    await client.ack(pushed[2], ["80"])
    await client.request(LISTENER)
    again = await client.recv()
    assert again.type_url == LISTENER and names(again, listener_pb2.Listener) == names(pushed[1], listener_pb2.Listener)


async def test_a_service_change_pushes_only_that_services_assignments(xds: XdsHarness) -> None:
    client = xds.sotw()
    for type_url, subscription in ((CLUSTER, []), (ENDPOINT, [WEB, API]), (LISTENER, []), (ROUTE, ["80"])):
        await client.request(type_url, subscription)
        await client.ack(await client.recv(), subscription)
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))  # not subscribed: CDS and RDS but no EDS (nor LDS)
    pushed = [await client.recv() for _ in range(2)]
    assert [r.type_url for r in pushed] == [CLUSTER, ROUTE]
    for response, subscription in zip(pushed, ([], ["80"]), strict=True):
        await client.ack(response, subscription)
    xds.apply(m.service("api", cluster_ip="10.96.0.2", port=81))  # api's port moves: its assignment, not web's
    pushed = [await client.recv() for _ in range(2)]
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT]
    (cla,) = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value) for r in pushed[1].resources]
    assert cla.cluster_name == API and not cla.endpoints  # outbound|80 of api names no port any more


async def test_wildcard_lds_carries_outbound_and_inbound_listeners(xds: XdsHarness) -> None:
    xds.apply(m.pod("web-1", "10.1.0.1", app="web"))
    client = xds.sotw(node(pod="web-1", ip="10.1.0.1"))
    await client.request(LISTENER)
    response = await client.recv()
    got = names(response, listener_pb2.Listener)
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_80"} <= set(got)
    inbound = next(
        listener_pb2.Listener.FromString(r.value)
        for r in response.resources
        if listener_pb2.Listener.FromString(r.value).name == "virtualInbound"
    )
    assert {fc.filter_chain_match.destination_port.value for fc in inbound.filter_chains} >= {8080}


async def test_rds_virtual_hosts_name_every_form_of_the_service(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ROUTE, ["80"])
    (route,) = [route_pb2.RouteConfiguration.FromString(r.value) for r in (await client.recv()).resources]
    vhost = next(v for v in route.virtual_hosts if v.name == "web.default.svc.cluster.local:80")
    assert {"web", "web.default", "web.default.svc", "web.default.svc.cluster.local", "10.96.0.1"} <= set(vhost.domains)
    assert vhost.routes[0].route.cluster == WEB


async def test_a_port_in_a_resource_name_is_ascii_digits_and_other_digits_do_not_end_the_stream(
    xds: XdsHarness,
) -> None:
    """Python's isdigit takes "²", which int() refuses (the stream used to end with the ValueError's text),
    and "\u0668\u0660", which int() reads as 80. Both are names that match no port, as Go's strconv reads them."""
    client = xds.sotw()
    await client.request(ROUTE, ["²", "\u0668\u0660"])
    routes = [route_pb2.RouteConfiguration.FromString(r.value) for r in (await client.recv()).resources]
    assert sorted(r.name for r in routes) == sorted(["²", "\u0668\u0660"])
    assert not [v.name for r in routes for v in r.virtual_hosts if v.name.endswith(":80")]
    port = WEB.split("|")[1]
    await client.request(ENDPOINT, [WEB.replace(f"|{port}|", "|²|"), WEB.replace(f"|{port}|", "|\u0668\u0660|"), WEB])
    response = await client.recv()
    assignments = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value) for r in response.resources]
    assert {a.cluster_name: len(a.endpoints) for a in assignments} == {  # names of no cluster: empty, as any
        WEB.replace(f"|{port}|", "|\u00b2|"): 0,
        WEB.replace(f"|{port}|", "|\u0668\u0660|"): 0,
        WEB: 1,
    }
    proxyless = xds.sotw(node(pod="grpc-1", ip="10.1.0.9", GRPC="true"))
    await proxyless.request(LISTENER, ["web.default.svc.cluster.local:²"])
    assert names(await proxyless.recv(), listener_pb2.Listener) == []


async def test_a_port_of_thousands_of_digits_in_a_resource_name_does_not_end_the_stream(xds: XdsHarness) -> None:
    """int() raises on more than 4,300 digits; Go's strconv reads such a number as out of range: a name
    that matches no port."""
    long_port = "9" * 5000
    client = xds.sotw()
    await client.request(ROUTE, [long_port])
    routes = [route_pb2.RouteConfiguration.FromString(r.value) for r in (await client.recv()).resources]
    assert [r.name for r in routes] == [long_port]
    assert not [v.name for r in routes for v in r.virtual_hosts if v.name.endswith(long_port)]
    port = WEB.split("|")[1]
    await client.request(ENDPOINT, [WEB.replace(f"|{port}|", f"|{long_port}|"), WEB])
    assignments = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value) for r in (await client.recv()).resources]
    assert {a.cluster_name: len(a.endpoints) for a in assignments} == {
        WEB.replace(f"|{port}|", f"|{long_port}|"): 0,
        WEB: 1,
    }
    proxyless = xds.sotw(node(pod="grpc-1", ip="10.1.0.9", GRPC="true"))
    await proxyless.request(LISTENER, [f"web.default.svc.cluster.local:{long_port}"])
    assert names(await proxyless.recv(), listener_pb2.Listener) == []


async def test_unknown_type_is_ignored_and_the_stream_stays_open(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", ["x"])
    await client.request(CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    assert metrics.unknown_types.get("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig") >= 1


@pytest.mark.parametrize(
    ("bad_node", "detail"),
    [
        (None, "node.id is required"),
        (node(pod="x", ns="default").__class__(id="sidecar~10.0.0.1~nodot~d"), "is not <pod>.<namespace>"),
        (node().__class__(id="sidecar~not-an-ip~a.b~d"), "is not an IP address"),
        (node().__class__(id="a~b"), "is not <type>~<ip>~<pod>.<namespace>~<domain>"),
    ],
)
async def test_first_request_without_a_valid_node_is_invalid_argument(
    xds: XdsHarness, bad_node: object, detail: str
) -> None:
    client = xds.sotw(None)
    client.node = bad_node  # type: ignore[assignment]
    await client.request(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.recv()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (caught.value.details() or "")


async def test_reconnect_with_a_version_but_no_nonce_is_answered(xds: XdsHarness) -> None:
    first = xds.sotw()
    await first.request(CLUSTER)
    response = await first.recv()
    await first.close()
    again = xds.sotw()
    await again.request(CLUSTER, version=response.version_info)
    assert (await again.recv()).type_url == CLUSTER
