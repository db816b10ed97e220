"""Delta (incremental) ADS over a real gRPC stream: subscriptions, removals, reconnects, NACKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import API, WEB, XdsHarness, node, web_and_api


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_and_api() as harness:
        yield harness


def addresses(resource: object) -> list[str]:
    cla = endpoint_pb2.ClusterLoadAssignment()
    resource.resource.Unpack(cla)  # type: ignore[attr-defined]
    return sorted(e.endpoint.address.socket_address.address for loc in cla.endpoints for e in loc.lb_endpoints)


async def test_wildcard_cds_sends_everything_then_only_changes_and_removals(xds: XdsHarness) -> None:
    client = xds.delta()
    await client.request(CLUSTER)
    first = await client.recv()
    names = {r.name for r in first.resources}
    assert {WEB, API, "BlackHoleCluster"} <= names and all(r.version for r in first.resources)
    await client.ack(first)
    xds.apply(m.service("shop", cluster_ip="10.96.0.3"))
    added = await client.recv()
    assert [r.name for r in added.resources] == ["outbound|80||shop.default.svc.cluster.local"]
    assert list(added.removed_resources) == []
    await client.ack(added)
    xds.delete(m.service("api"))
    removed = await client.recv()
    assert list(removed.resources) == [] and list(removed.removed_resources) == [API]


async def test_subscribe_is_honoured_with_a_stale_nonce_and_unsubscribe_stops_pushes(xds: XdsHarness) -> None:
    client = xds.delta()
    await client.request(ENDPOINT, subscribe=[WEB])
    first = await client.recv()
    assert [(r.name, addresses(r)) for r in first.resources] == [(WEB, ["10.1.0.1"])]
    await client.request(ENDPOINT, subscribe=[API], nonce="stale-nonce")
    second = await client.recv()
    assert [r.name for r in second.resources] == [API]  # only the new subscription
    assert list(second.removed_resources) == []  # WEB, subscribed and existing, is not announced removed
    await client.ack(second)
    await client.request(ENDPOINT, unsubscribe=[WEB], nonce=second.nonce)  # no response
    await client.request(ROUTE, subscribe=["80"])  # answered in order: proves the unsubscribe was handled
    assert (await client.recv()).type_url == ROUTE
    xds.apply(m.endpoint_slice("web", ips=["10.1.0.1", "10.1.0.9"]))  # not pushed: unsubscribed
    xds.apply(m.endpoint_slice("api", ips=["10.1.1.1", "10.1.1.2"]))
    pushed = await client.recv()
    assert [(r.name, addresses(r)) for r in pushed.resources] == [(API, ["10.1.1.1", "10.1.1.2"])]


async def test_a_subscribed_resource_that_goes_is_announced_removed(xds: XdsHarness) -> None:
    client = xds.delta()
    await client.request(CLUSTER, subscribe=[WEB, API])  # by name, not the wildcard
    first = await client.recv()
    assert sorted(r.name for r in first.resources) == [API, WEB]
    await client.ack(first)
    xds.delete(m.service("api"))
    removed = await client.recv()
    assert list(removed.resources) == [] and list(removed.removed_resources) == [API]


async def test_subscribing_to_a_missing_resource_reports_it_removed(xds: XdsHarness) -> None:
    client = xds.delta()
    missing = "outbound|80||nope.default.svc.cluster.local"
    await client.request(ROUTE, subscribe=["80"])
    await client.ack(await client.recv())
    await client.request(CLUSTER, subscribe=[missing, WEB])
    response = await client.recv()
    assert [r.name for r in response.resources] == [WEB]
    assert list(response.removed_resources) == [missing]


async def test_reconnect_with_initial_versions_resends_only_what_changed(xds: XdsHarness) -> None:
    first = xds.delta()
    await first.request(CLUSTER)
    initial = await first.recv()
    versions = {r.name: r.version for r in initial.resources}
    await first.close()
    versions[WEB] = "stale-version"
    versions["outbound|80||gone.default.svc.cluster.local"] = "v1"
    again = xds.delta()
    await again.request(CLUSTER, initial=versions)
    response = await again.recv()
    assert [r.name for r in response.resources] == [WEB]
    assert list(response.removed_resources) == ["outbound|80||gone.default.svc.cluster.local"]


async def test_delta_nack_is_recorded_and_not_answered(xds: XdsHarness) -> None:
    client = xds.delta(node(pod="d", ip="10.3.0.1"))
    await client.request(LISTENER)
    response = await client.recv()
    await client.request(LISTENER, nonce=response.nonce, error="bad listener")
    await client.request(ENDPOINT, subscribe=[WEB])
    assert (await client.recv()).type_url == ENDPOINT  # nothing came for the NACK
    (status,) = xds.service.syncz()
    assert status["delta"] is True
    assert status["types"]["LDS"]["status"] == "NACKED" and status["types"]["LDS"]["error"] == "bad listener"
