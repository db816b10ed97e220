"""A stream's push path (`StreamBase.push`, `_push`, `record`): which types a push carries, how pushes
that arrive while one is pending merge into it, and what `/debug/syncz` counts.

Each test is one thing a proxy or an operator would see go wrong: a service change lost because an
endpoint change arrived behind it, a relabelled pod left with its old inbound cluster, a type the
proxy never asked for pushed anyway, push and NACK counts that stop at one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind
from discovery.connection import StreamLimits
from discovery.pushqueue import PushRequest
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import WEB, XdsHarness, cluster_names, node, web_alone
from tests.discovery.test_bounds import refusal, until


@pytest.fixture
async def slow() -> AsyncIterator[XdsHarness]:
    """`web` alone, with a debounce long enough that no push of the service's own comes within a test."""
    async with web_alone(debounce=60.0) as harness:
        yield harness


def change(kind: UpdateKind, name: str) -> PushRequest:
    return PushRequest.from_change(ModelChange(updates=frozenset({ConfigUpdate(kind, name)}), version=1))


async def test_an_endpoint_change_behind_a_pending_service_change_does_not_replace_it(slow: XdsHarness) -> None:
    client = slow.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv())
    await client.request(ENDPOINT, [WEB])
    await client.ack(await client.recv(), [WEB])
    slow.apply(m.service("api", cluster_ip="10.96.0.2"))
    [stream] = slow.service.streams.values()
    # Both arrive before the stream's pusher runs: the second merges into the pending first.
    stream.push(change(UpdateKind.SERVICE, "api.default.svc.cluster.local"))
    sent = stream.push(change(UpdateKind.ENDPOINTS, "web.default.svc.cluster.local"))
    first = await client.recv()
    assert first.type_url == CLUSTER and "outbound|80||api.default.svc.cluster.local" in cluster_names(first)
    assert (await client.recv()).type_url == ENDPOINT
    await sent  # resolves once the merged push is sent
    assert slow.service.syncz()[0]["pushes"] == 1  # one push, not two


async def test_a_pod_relabelled_into_another_service_gets_its_inbound_cluster() -> None:
    harness = XdsHarness()
    harness.apply(
        m.service("web", cluster_ip="10.96.0.1", target=8080),
        m.service("api", cluster_ip="10.96.0.2", target=9090),
        m.pod("web-1", "10.1.0.1", app="web"),
        m.endpoint_slice("web", ips=["10.1.0.1"]),
    )
    await harness.start()
    try:
        client = harness.sotw(node(pod="web-1", ip="10.1.0.1"))  # no LABELS: the pod's labels decide
        await client.request(CLUSTER)
        first = await client.recv()
        assert "inbound|8080||" in cluster_names(first) and "inbound|9090||" not in cluster_names(first)
        await client.ack(first)
        harness.apply(m.pod("web-1", "10.1.0.1", app="api"))  # its own workload changed, no service did
        pushed = await client.recv()
        assert pushed.type_url == CLUSTER
        assert "inbound|9090||" in cluster_names(pushed) and "inbound|8080||" not in cluster_names(pushed)
    finally:
        await harness.stop()


async def test_a_type_whose_only_request_was_a_nack_is_not_pushed_until_asked_for() -> None:
    # As in Istio, a NACK answers nothing and subscribes to nothing: pushes leave the type alone
    # until the proxy asks for it.
    async with web_alone() as xds:
        client = xds.sotw()
        await client.request(CLUSTER, nonce="from-an-earlier-stream", error="cluster rejected")
        await client.request(LISTENER)
        await client.ack(await client.recv())
        xds.apply(m.service("db", cluster_ip="10.96.0.8", port=5432, port_name="tcp"))  # new cluster and listener
        assert (await client.recv()).type_url == LISTENER
        await client.request(CLUSTER)
        asked = await client.recv()
        assert asked.type_url == CLUSTER and "outbound|5432||db.default.svc.cluster.local" in cluster_names(asked)


async def test_syncz_counts_every_push_and_every_nack() -> None:
    async with web_alone() as xds:
        client = xds.sotw()
        await client.request(CLUSTER)
        await client.ack(await client.recv())
        for n, name in enumerate(("api", "db")):
            xds.apply(m.service(name, cluster_ip=f"10.96.0.{n + 5}"))
            pushed = await client.recv()
            await client.ack(pushed)
            await until(lambda n=n: xds.service.syncz()[0]["pushes"] == n + 1)  # type: ignore[misc]
        await client.request(CLUSTER, nonce=pushed.nonce, version=pushed.version_info, error="one")
        await client.request(CLUSTER, nonce=pushed.nonce, version=pushed.version_info, error="two")
        await until(lambda: xds.service.syncz()[0]["nacks"] == 2)
        (status,) = xds.service.syncz()
        assert (status["pushes"], status["nacks"], status["types"]["CDS"]["error"]) == (2, 2, "two")


async def test_a_stream_may_hold_exactly_its_limit_of_names() -> None:
    async with web_alone(limits=StreamLimits(names_per_stream=4)) as xds:
        client = xds.sotw()
        await client.request(ENDPOINT, [WEB, "outbound|81||web.default.svc.cluster.local"])
        await client.recv()
        await client.request(ROUTE, ["80", "81"])  # 4 names: the limit, allowed
        assert (await client.recv()).type_url == ROUTE
        await client.request(ROUTE, ["80", "81", "82"])
        error = await refusal(client.recv)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "would hold 5 resource names" in (error.details() or "")
