"""What a SotW stream remembers per type, seen over a real gRPC stream: the subscription a reconnect or
an ACK switches to, and the versions and NACKs `proxy-status` reports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from discovery.xdstypes import CLUSTER, ENDPOINT, ROUTE
from tests.discovery.harness import API, WEB, SotwClient, XdsHarness, cluster_names, web_and_api


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_and_api() as harness:
        yield harness


def endpoint_names(response: object) -> list[str]:
    out = []
    for res in response.resources:  # type: ignore[attr-defined]
        msg = endpoint_pb2.ClusterLoadAssignment()
        res.Unpack(msg)
        out.append(msg.cluster_name)
    return sorted(out)


async def settle(client: SotwClient) -> None:
    """Wait until the server has handled every request sent so far: RDS is answered only after them."""
    await client.request(ROUTE, ["80"])
    assert (await client.recv()).type_url == ROUTE


async def test_a_request_without_a_nonce_on_the_same_stream_switches_to_its_names(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB])
    assert endpoint_names(await client.recv()) == [WEB]
    await client.request(ENDPOINT, [API])  # no nonce: the client lost its state and asks afresh
    assert endpoint_names(await client.recv()) == [API]


async def test_a_named_cds_subscription_becomes_wildcard_on_a_reconnect_and_on_an_ack(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(CLUSTER, [WEB])
    named = await client.recv()
    assert cluster_names(named) == {WEB}
    await client.request(CLUSTER, [], nonce=named.nonce, version=named.version_info)  # ACK, now asking for all
    everything = cluster_names(await client.recv())
    assert {WEB, API, "PassthroughCluster"} <= everything

    again = xds.sotw()
    await again.request(CLUSTER, [WEB])
    assert cluster_names(await again.recv()) == {WEB}
    await again.request(CLUSTER, ["*"])  # no nonce
    assert cluster_names(await again.recv()) == everything


async def test_proxy_status_shows_the_version_sent_and_the_version_acknowledged(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB])
    response = await client.recv()
    await settle(client)
    (status,) = xds.service.syncz()
    eds = status["types"]["EDS"]
    assert (eds["version_sent"], eds["version_acked"], eds["status"]) == (response.version_info, "", "STALE")
    await client.ack(response, [WEB])
    await settle(client)
    (status,) = xds.service.syncz()
    eds = status["types"]["EDS"]
    assert (eds["version_sent"], eds["version_acked"], eds["status"]) == (
        response.version_info,
        response.version_info,
        "SYNCED",
    )


async def test_a_first_request_carrying_an_error_keeps_its_subscription_and_error(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, [WEB, API], error="rejected before anything was sent")
    await client.request(CLUSTER, [], error="rejected too")
    await settle(client)
    (status,) = xds.service.syncz()
    eds, cds = status["types"]["EDS"], status["types"]["CDS"]
    assert (eds["status"], eds["subscribed"], eds["error"]) == ("NOT SENT", 2, "rejected before anything was sent")
    assert (cds["status"], cds["subscribed"], cds["error"]) == ("NOT SENT", "*", "rejected too")


async def test_a_star_in_an_eds_subscription_names_no_cluster(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, ["*", WEB])  # EDS has no wildcard: "*" is not a cluster name
    assert endpoint_names(await client.recv()) == [WEB]
    await settle(client)
    (status,) = xds.service.syncz()
    assert status["types"]["EDS"]["subscribed"] == 1
