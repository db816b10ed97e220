"""What operators see of pushes, alike for State of the World and Delta: the mesh version and control
plane each response names (what `proxy-status` shows), responses counted and timed by type, push
convergence timed, and a push that has nothing new for a proxy neither sent nor counted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import REGISTRY

from discovery import metrics
from discovery.xdstypes import CLUSTER, LISTENER
from tests.discovery import meshdata as m
from tests.discovery.harness import DeltaClient, SotwClient, XdsHarness, web_and_api
from tests.discovery.test_bounds import until

PROTOCOLS = ["sotw", "delta"]


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_and_api(web_ips=["10.1.0.1", "10.1.0.2"]) as harness:
        yield harness


def client_for(xds: XdsHarness, protocol: str) -> SotwClient | DeltaClient:
    return xds.delta() if protocol == "delta" else xds.sotw()


def version_of(response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse) -> str:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return response.system_version_info
    return response.version_info


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_responses_carry_the_mesh_version_and_name_the_control_plane(xds: XdsHarness, protocol: str) -> None:
    client = client_for(xds, protocol)
    await client.request(CLUSTER)
    first = await client.recv()
    assert version_of(first) == str(xds.service.snapshot().version)
    identifier = json.loads(first.control_plane.identifier)  # istioctl proxy-status reads it
    assert (identifier["Component"], identifier["ID"]) == ("istiod", "istiod-test")
    await client.ack(first)
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))
    pushed = await client.recv()
    assert version_of(pushed) == str(xds.service.snapshot().version)
    assert int(version_of(pushed)) > int(version_of(first))
    await client.ack(pushed)
    # what proxy-status shows as the version the proxy has
    await until(lambda: xds.service.syncz()[0]["types"]["CDS"]["version_acked"] == version_of(pushed))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_responses_are_counted_and_timed_by_type_and_pushes_time_convergence(
    xds: XdsHarness, protocol: str
) -> None:
    def now() -> tuple[float, ...]:
        return (
            metrics.pushes.get("cds"),
            sample("pilot_xds_push_time_count", type="cds"),
            sample("pilot_xds_push_time_sum", type="cds"),
            sample("pilot_proxy_convergence_time_count"),
            sample("pilot_proxy_convergence_time_sum"),
        )

    start = now()
    client = client_for(xds, protocol)
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    answered = now()  # an answer to a request: counted and timed, but no push converged
    assert (answered[0] - start[0], answered[1] - start[1], answered[3] - start[3]) == (1, 1, 0)
    xds.apply(m.service("shop", cluster_ip="10.96.0.9"))
    assert (await client.recv()).type_url == CLUSTER
    pushed = now()
    assert (pushed[0] - start[0], pushed[1] - start[1], pushed[3] - start[3]) == (2, 2, 1)
    assert 0 <= pushed[2] - start[2] < 10 and 0 <= pushed[4] - start[4] < 10  # seconds, not clock readings


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_push_with_nothing_new_for_the_client_sends_nothing_and_counts_no_push(
    xds: XdsHarness, protocol: str
) -> None:
    client = client_for(xds, protocol)
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
    assert [(await client.recv()).type_url for _ in range(2)] == [CLUSTER, LISTENER]  # one push, two types
    await until(lambda: xds.service.syncz()[0]["pushes"] == 1)  # counted once the push is done
