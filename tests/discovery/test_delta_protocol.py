"""Delta (incremental) ADS over a real gRPC stream: subscriptions, removals, reconnects, NACKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from discovery import metrics
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import API, WEB, XdsHarness, node, web_and_api
from tests.discovery.test_bounds import until
from tests.discovery.test_sotw_protocol import sample


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


async def test_responses_carry_the_mesh_version_and_name_the_control_plane(xds: XdsHarness) -> None:
    client = xds.delta()
    await client.request(CLUSTER)
    first = await client.recv()
    assert first.system_version_info == str(xds.service.snapshot().version)
    identifier = json.loads(first.control_plane.identifier)  # istioctl proxy-status reads it
    assert (identifier["Component"], identifier["ID"]) == ("istiod", "istiod-test")
    await client.ack(first)
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))
    pushed = await client.recv()
    assert pushed.system_version_info == str(xds.service.snapshot().version)
    assert int(pushed.system_version_info) > int(first.system_version_info)
    await client.ack(pushed)
    # what proxy-status shows as the version the proxy has
    await until(lambda: xds.service.syncz()[0]["types"]["CDS"]["version_acked"] == pushed.system_version_info)


async def test_responses_are_counted_and_timed_by_type_and_pushes_time_convergence(xds: XdsHarness) -> None:
    def now() -> tuple[float, ...]:
        return (
            metrics.pushes.get("cds"),
            sample("pilot_xds_push_time_count", type="cds"),
            sample("pilot_xds_push_time_sum", type="cds"),
            sample("pilot_proxy_convergence_time_count"),
            sample("pilot_proxy_convergence_time_sum"),
        )

    start = now()
    client = xds.delta()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    answered = now()  # an answer to a request: counted and timed, but no push converged
    assert (answered[0] - start[0], answered[1] - start[1], answered[3] - start[3]) == (1, 1, 0)
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))
    assert (await client.recv()).type_url == CLUSTER
    pushed = now()
    assert (pushed[0] - start[0], pushed[1] - start[1], pushed[3] - start[3]) == (2, 2, 1)
    assert 0 <= pushed[2] - start[2] < 10 and 0 <= pushed[4] - start[4] < 10  # seconds, not clock readings


async def test_a_push_with_nothing_new_for_the_client_sends_nothing_and_counts_no_push(xds: XdsHarness) -> None:
    client = xds.delta()
    await client.request(LISTENER)
    await client.ack(await client.recv())
    before = metrics.unchanged.get("lds")
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))  # HTTP on port 80: no listener changes
    await until(lambda: metrics.unchanged.get("lds") == before + 1)
    await client.request(CLUSTER)
    assert (await client.recv()).type_url == CLUSTER  # the first response since: no LDS came in between
    (status,) = xds.service.syncz()
    assert status["pushes"] == 0 and status["types"]["LDS"]["status"] == "SYNCED"
    xds.apply(m.service("db", cluster_ip="10.96.0.8", port=5432, port_name="tcp"))  # a new listener: pushed
    assert {(await client.recv()).type_url for _ in range(2)} == {CLUSTER, LISTENER}
    await until(lambda: xds.service.syncz()[0]["pushes"] == 1)  # one push, counted once it is done


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
