"""How many xDS streams one client address may hold open (`discovery.clients`), over a real grpc.aio port.

Each stream is bounded on its own (`test_bounds.py`); without a count per client, a client without
credentials could still open streams until the server ran out of memory. Over the limit the stream
ends with RESOURCE_EXHAUSTED naming the client, its count and the flag; other addresses, and the
client's own open streams, are served as before; a closed stream frees its place.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2

from discovery import metrics
from discovery.clients import OpenStreams
from discovery.connection import LogThrottle, StreamLimits
from discovery.server import AdsServer
from discovery.stream import StreamRefused
from discovery.xdstypes import CLUSTER
from tests.discovery import meshdata as m
from tests.discovery.harness import SotwClient, XdsHarness, cluster_names, node, web_alone
from tests.discovery.test_bounds import refusal, until
from tests.helpers.relay import Relay

LIMIT = 3
FULL = (
    f"client 127.0.0.1 already has {LIMIT} xDS streams open, the most one client address may have "
    f"(meshplane serve --max-streams-per-client={LIMIT}); close the streams it no longer uses, or raise the "
    "limit if many proxies share this address"
)


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_alone(limits=StreamLimits(streams_per_client=LIMIT)) as harness:
        yield harness


async def opened(client: SotwClient) -> SotwClient:
    """`client` after its first CDS response."""
    await client.request(CLUSTER)
    response = await client.recv()
    await client.ack(response)
    return client


def pod(i: int, **metadata: Any) -> base_pb2.Node:
    return node(pod=f"app-{i}", ip=f"10.1.0.{i + 1}", **metadata)


async def test_a_client_over_its_limit_is_refused_naming_the_limit_and_its_open_streams_are_still_served(
    xds: XdsHarness,
) -> None:
    clients = [await opened(xds.sotw(pod(i))) for i in range(LIMIT)]
    extra = xds.sotw(pod(9))
    # refused as it opens, so nothing is written: a write racing the refusal makes grpcio report INTERNAL
    error = await refusal(extra.recv)
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, FULL)

    xds.apply(m.service("api", cluster_ip="10.96.0.2"))
    for client in clients:
        push = await client.recv()
        assert "outbound|80||api.default.svc.cluster.local" in cluster_names(push)
    assert xds.service.open_streams.of("127.0.0.1") == LIMIT


async def test_a_closed_stream_frees_its_place(xds: XdsHarness) -> None:
    clients = [await opened(xds.sotw(pod(i))) for i in range(LIMIT)]
    await clients[0].close()
    await until(lambda: xds.service.open_streams.of("127.0.0.1") == LIMIT - 1)
    await opened(xds.sotw(pod(7)))
    for client in clients[1:]:
        await client.close()
    await until(lambda: xds.service.open_streams.clients() == 1 and xds.service.open_streams.of("127.0.0.1") == 1)


async def test_refused_streams_hold_no_place(xds: XdsHarness) -> None:
    clients = [await opened(xds.sotw(pod(i))) for i in range(LIMIT)]
    for i in range(5):
        extra = xds.sotw(pod(10 + i))
        assert (await refusal(extra.recv)).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await clients[0].close()
    await until(lambda: xds.service.open_streams.of("127.0.0.1") == LIMIT - 1)
    await opened(xds.sotw(pod(20)))  # one place was free, whatever was refused before


async def test_another_address_is_served_while_one_is_full(xds: XdsHarness) -> None:
    for i in range(LIMIT):
        await opened(xds.sotw(pod(i)))
    async with Relay(target_port=xds.port, source="127.0.0.2") as relay:
        neighbours = [await opened(SotwClient(xds.channel(relay.address), pod(30 + i))) for i in range(LIMIT)]
        assert xds.service.open_streams.of("127.0.0.2") == LIMIT
        for client in neighbours:
            await client.close()


async def test_refusals_are_counted_by_status_and_logged_once_per_10_seconds(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics.HOOKS, "refusals", LogThrottle())
    for i in range(LIMIT):
        await opened(xds.sotw(pod(i)))
    before = metrics.refused_streams.get("RESOURCE_EXHAUSTED")
    caplog.set_level(logging.WARNING, logger="discovery")
    for i in range(20):
        extra = xds.sotw(pod(10 + i))
        await refusal(extra.recv)
    assert metrics.refused_streams.get("RESOURCE_EXHAUSTED") - before == 20
    lines = [r for r in caplog.records if r.getMessage() == "xDS stream refused"]
    assert len(lines) == 1
    fields = vars(lines[0])
    assert (fields["code"], fields["reason"], fields["suppressed"]) == (
        "RESOURCE_EXHAUSTED",
        FULL,
        0,
    )


# -- the secure port: counted before authentication, both ports together -----------------------------


async def test_the_secure_port_counts_first_and_shares_the_count_with_the_plaintext_port(xds: XdsHarness) -> None:
    identified: list[str] = []

    async def identify(context: Any) -> Sequence[str]:
        identified.append(context.peer())
        return ["spiffe://cluster.local/ns/default/sa/default"]

    secure = grpc.aio.server()
    AdsServer(xds.service, secure=True, identify=identify).register(secure)
    port = secure.add_insecure_port("127.0.0.1:0")
    await secure.start()
    try:
        on_plaintext = await opened(xds.sotw(pod(0)))
        on_secure = [
            await opened(SotwClient(xds.channel(f"127.0.0.1:{port}"), pod(1 + i, SERVICE_ACCOUNT="default")))
            for i in range(LIMIT - 1)
        ]
        assert len(identified) == LIMIT - 1
        extra = SotwClient(xds.channel(f"127.0.0.1:{port}"), pod(8, SERVICE_ACCOUNT="default"))
        error = await refusal(extra.recv)
        assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, FULL)
        assert len(identified) == LIMIT - 1, "a stream over the limit must not cost an authentication"
        await on_plaintext.close()
        await until(lambda: xds.service.open_streams.of("127.0.0.1") == LIMIT - 1)
        await opened(SotwClient(xds.channel(f"127.0.0.1:{port}"), pod(9, SERVICE_ACCOUNT="default")))
        for client in on_secure:
            await client.close()
    finally:
        await secure.stop(0)


# -- the table itself -----------------------------------------------------------------------------------


async def test_a_stream_that_ends_in_an_error_gives_its_place_back(xds: XdsHarness) -> None:
    broken = await opened(xds.sotw(pod(0)))
    await broken.request(CLUSTER, [f"name-{n}" for n in range(20_000)])  # over the names-per-request limit
    assert (await refusal(broken.recv)).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await until(lambda: xds.service.open_streams.clients() == 0)
    for i in range(LIMIT):
        await opened(xds.sotw(pod(1 + i)))


def test_clients_are_counted_apart_and_forgotten_at_zero() -> None:
    streams = OpenStreams(1)
    streams.open("10.0.0.1")
    streams.open("10.0.0.2")
    assert streams.clients() == 2
    with pytest.raises(StreamRefused) as refused:
        streams.open("10.0.0.1")
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details.startswith("client 10.0.0.1 already has 1 xDS streams open")
    assert streams.of("10.0.0.1") == 1
    streams.close("10.0.0.1")
    streams.close("10.0.0.2")
    assert streams.clients() == 0


def test_a_client_without_an_address_is_named_so() -> None:
    streams = OpenStreams(1)
    streams.open("")
    with pytest.raises(StreamRefused, match=r"^client \(unknown address\) already has 1"):
        streams.open("")


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match=f"at least 1, not {limit}"):
        OpenStreams(limit)
