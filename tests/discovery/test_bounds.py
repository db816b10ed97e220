"""What a client without credentials can make the xDS server hold: names, memory, metric series, log lines.

Every limit ends the stream with a precise status naming the field and the limit; what a closed
stream held is freed; metric labels come from a closed set; NACK floods and unknown types log one
line per stream and type per 10 s, with client text cut to 1 KiB.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from controlplane.aio import TurnBudget
from controlplane.httpserver import metrics_app
from discovery import metrics
from discovery import stream as stream_module
from discovery.cache import XdsCache
from discovery.connection import (
    PIECE_NAMES,
    REQUEST_BASE_UNITS,
    REQUEST_UNITS_PER_TURN,
    Connection,
    LogThrottle,
    StreamLimits,
    Watched,
    canonical,
    generating,
    reading,
    shared_subscriptions,
    units_of,
)
from discovery.generators.cds import PIECE_SERVICES
from discovery.wire import LOCATOR_BYTES, NODE_BYTES
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.harness import TIMEOUT, XdsHarness, node, web_alone
from tests.discovery.harness import cluster_names as cluster_names_of
from tests.helpers.protowire import length_delimited

LIMITS = StreamLimits()


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with web_alone() as harness:
        yield harness


def cluster_names(count: int, *, prefix: str = "made-up") -> list[str]:
    return [f"outbound|80||{prefix}-{i}.default.svc.cluster.local" for i in range(count)]


async def refusal(read: Callable[[], Awaitable[Any]]) -> grpc.aio.AioRpcError:
    """The status the stream ended with (reading until it ends)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            await read()
    return caught.value


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


# -- resource names ------------------------------------------------------------------------------------


async def test_a_request_over_the_name_limit_ends_the_stream_with_resource_exhausted(xds: XdsHarness) -> None:
    client = xds.sotw()
    await client.request(ENDPOINT, cluster_names(LIMITS.names_per_request + 1))
    error = await refusal(client.recv)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"DiscoveryRequest.resource_names: {LIMITS.names_per_request + 1} names in one request" in (
        error.details() or ""
    )
    assert f"limit of {LIMITS.names_per_request}" in (error.details() or "")


async def test_names_over_the_stream_limit_across_types_end_the_stream(xds: XdsHarness) -> None:
    client = xds.sotw()
    half = LIMITS.names_per_stream // 2 + 1
    await client.request(ENDPOINT, cluster_names(half))
    assert len((await client.recv()).resources) == half
    await client.request(ROUTE, [str(port) for port in range(1, half + 1)])
    error = await refusal(client.recv)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"RDS subscription: the stream would hold {2 * half} resource names" in (error.details() or "")
    assert f"limit of {LIMITS.names_per_stream} names per stream" in (error.details() or "")


async def test_delta_subscriptions_add_up_to_the_stream_limit(xds: XdsHarness) -> None:
    client = xds.delta()
    half = LIMITS.names_per_stream // 2 + 1
    await client.request(ENDPOINT, subscribe=cluster_names(half, prefix="a"))
    first = await client.recv()
    await client.request(ENDPOINT, subscribe=cluster_names(half, prefix="b"), nonce=first.nonce)
    error = await refusal(client.recv)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EDS subscription" in (error.details() or "") and "names per stream" in (error.details() or "")


async def test_delta_initial_versions_count_against_the_request_limit(xds: XdsHarness) -> None:
    client = xds.delta()
    versions = dict.fromkeys(cluster_names(LIMITS.names_per_request + 1), "v1")
    await client.request(CLUSTER, subscribe=["*"], initial=versions)
    error = await refusal(client.recv)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "initial_resource_versions" in (error.details() or "")


# -- what is never parsed -----------------------------------------------------------------------------------


async def raw_refusal(xds: XdsHarness, method: str, request: bytes) -> grpc.aio.AioRpcError:
    """Send `request` as the first message of an ADS `method` stream; the status the stream ended with."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}")
    try:
        call = channel.stream_stream(
            f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )(iter([request]), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        return caught.value
    finally:
        await channel.close()


# Bytes that are no protobuf message: a field this size refused with its limit was never parsed.
JUNK = b"\xff" * (NODE_BYTES + 1)


async def test_a_node_over_its_size_is_refused_unparsed(xds: XdsHarness) -> None:
    request = DiscoveryRequest(type_url=CLUSTER).SerializeToString() + length_delimited(2, JUNK)
    error = await raw_refusal(xds, "StreamAggregatedResources", request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"node is {NODE_BYTES + 1} bytes serialized; the limit is {NODE_BYTES} bytes"


async def test_delta_initial_versions_over_the_limit_are_refused_unparsed(xds: XdsHarness) -> None:
    entries = b"".join(length_delimited(5, b"\xff") for _ in range(LIMITS.names_per_request + 1))
    request = DeltaDiscoveryRequest(type_url=CLUSTER).SerializeToString() + entries
    error = await raw_refusal(xds, "DeltaAggregatedResources", request)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"initial_resource_versions: {LIMITS.names_per_request + 1} names in one request" in (error.details() or "")


@pytest.mark.parametrize("method", ["StreamAggregatedResources", "DeltaAggregatedResources"])
async def test_bytes_that_are_no_request_are_invalid_argument(xds: XdsHarness, method: str) -> None:
    error = await raw_refusal(xds, method, b"\xff\xff\xff")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    kind = "DiscoveryRequest" if method.startswith("Stream") else "DeltaDiscoveryRequest"
    assert (error.details() or "").startswith(f"the request is not a {kind}: ")


async def test_a_resource_locator_over_its_size_is_refused_unparsed(xds: XdsHarness) -> None:
    request = DiscoveryRequest(type_url=CLUSTER).SerializeToString() + length_delimited(7, JUNK[: LOCATOR_BYTES + 1])
    error = await raw_refusal(xds, "StreamAggregatedResources", request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == f"resource_locators[0] is {LOCATOR_BYTES + 1} bytes serialized; the limit is {LOCATOR_BYTES} bytes"
    )


# -- memory ----------------------------------------------------------------------------------------------


def live_connections() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Connection))


async def test_a_closed_stream_leaves_nothing_behind_but_bounded_caches(xds: XdsHarness) -> None:
    budget = 256 * 1024
    xds.service.cache = XdsCache(max_resource_bytes=budget, max_group_bytes=budget)
    connections_before, shared_before = live_connections(), shared_subscriptions()  # live_connections() collects
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        client = xds.sotw()
        response = None
        for round_ in range(4):  # each round subscribes to 9,000 names never seen before
            names = cluster_names(9_000, prefix=f"round{round_}")
            if response is None:
                await client.request(ENDPOINT, names)
            else:
                await client.request(ENDPOINT, names, nonce=response.nonce, version=response.version_info)
            response = await client.recv()
            assert len(response.resources) == 9_000
        held = tracemalloc.get_traced_memory()[0] - baseline
        del names, response
        await client.close()
        await until(lambda: not xds.service.streams)
        assert live_connections() == connections_before
        left = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    cache = xds.service.cache.stats()
    assert cache["resource_bytes"] <= budget and cache["group_bytes"] <= budget
    # The stream held its subscription and responses; after it closed, what is left is about the caches' budget.
    assert left < 4 * budget < held
    xds.service.cache.clear()
    gc.collect()
    assert shared_subscriptions() == shared_before  # only the cache still used the stream's subscription


def test_caches_are_bounded_by_bytes_as_well_as_entries() -> None:
    cache = XdsCache(max_resource_bytes=64 * 1024, max_group_bytes=64 * 1024)
    for name in cluster_names(5_000):
        cache.resource(ENDPOINT, name, key=1, build=lambda n=name: endpoint_pb2.ClusterLoadAssignment(cluster_name=n))
    for index in range(200):
        names = canonical(cluster_names(50, prefix=f"g{index}"))
        for _ in range(2):  # a group is kept once asked for twice
            cache.group(("eds", names), lambda: [])
    stats = cache.stats()
    assert 0 < stats["resource_bytes"] <= 64 * 1024 and stats["resources"] < 5_000
    assert 0 < stats["group_bytes"] <= 64 * 1024 and stats["groups"] < 200


def test_a_group_is_kept_from_the_second_time_it_is_asked_for() -> None:
    cache = XdsCache()
    first = cache.group("shared", lambda: [])
    assert cache.stats()["groups"] == 0  # one stream's own subscription never takes an entry
    second = cache.group("shared", lambda: [])
    assert second is not first and cache.stats()["groups"] == 1
    assert cache.group("shared", lambda: []) is second and cache.stats()["hits"] == 1


def test_a_model_change_retires_the_groups_unused_since_the_version_before() -> None:
    cache = XdsCache()

    def use(key: str) -> None:
        cache.group(key, lambda: [])
        cache.group(key, lambda: [])

    use("old")  # used at version 0 only
    cache.advance(5)
    use("kept")  # used at 5
    assert cache.stats()["groups"] == 2  # "old" was used in the version before 5: a push may still need it
    cache.advance(6)
    assert cache.stats()["groups"] == 1 and cache.stats()["retired"] == 1
    cache.group("kept", lambda: [])  # a hit at 6 keeps it for one more change
    cache.advance(3)  # an older version changes nothing
    cache.advance(7)
    assert cache.stats()["groups"] == 1
    cache.advance(8)
    assert cache.stats() | {"hits": 0, "misses": 0} == {
        "resources": 0,
        "groups": 0,
        "resource_bytes": 0,
        "group_bytes": 0,
        "hits": 0,
        "misses": 0,
        "retired": 2,
    }


async def test_subscriptions_no_one_shares_take_no_cache_entries(xds: XdsHarness) -> None:
    for index in range(30):  # proxies connecting one after another, each with its own list of clusters
        client = xds.sotw(node(f"p{index}"))
        await client.request(ENDPOINT, cluster_names(20, prefix=f"own{index}"))
        assert len((await client.recv()).resources) == 20
        await client.close()
    assert xds.service.cache.stats()["groups"] == 0


async def test_shared_groups_of_old_model_versions_are_dropped(xds: XdsHarness) -> None:
    clients = [xds.sotw(node(f"p{i}")) for i in range(2)]  # two proxies share the clusters
    responses = []
    for client in clients:
        await client.request(CLUSTER)
        responses.append(await client.recv())
    for change in range(10):
        xds.apply(m.service(f"added-{change}", cluster_ip=f"10.96.9.{change + 1}"))
        for index, client in enumerate(clients):
            await client.ack(responses[index])
            responses[index] = await client.recv()
            assert f"outbound|80||added-{change}.default.svc.cluster.local" in cluster_names_of(responses[index])
    assert xds.service.cache.version == xds.registry.version
    # Every change built the shared groups again; those of versions no push can use any more were dropped.
    stats = xds.service.cache.stats()
    assert stats["groups"] <= 6 and stats["retired"] >= 8, stats


def test_a_subscription_is_shared_while_used_and_forgotten_after() -> None:
    gc.collect()
    before = shared_subscriptions()
    names = cluster_names(100, prefix="shared")
    first = canonical(names)
    assert canonical(reversed(names)) is first and shared_subscriptions() == before + 1
    del first
    gc.collect()
    assert shared_subscriptions() == before


# -- metric labels -----------------------------------------------------------------------------------------


async def scrape() -> str:
    runner = web.AppRunner(metrics_app())
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text()
    finally:
        await runner.cleanup()


async def test_unknown_type_urls_share_one_other_series_and_one_log_line(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="discovery")
    client = xds.sotw()
    made_up = [f"type.googleapis.com/made.up.Type{i}" for i in range(300)]
    for type_url in made_up:
        await client.request(type_url, ["x"])
    await client.request(CLUSTER)
    assert (await client.recv()).type_url == CLUSTER  # requests are handled in order: all 300 were seen
    text = await scrape()
    series = [line for line in text.splitlines() if line.startswith("pilot_xds_unknown_type{")]
    assert not any("made.up" in line for line in series)
    assert sum('type="other"' in line for line in series) == 1
    assert metrics.unknown_types.get("other") >= len(made_up)
    unknown_lines = [r for r in caplog.records if "unknown type" in r.getMessage()]
    assert len(unknown_lines) == 1


# -- logs and NACK text ------------------------------------------------------------------------------------


async def test_a_nack_flood_logs_one_short_line_and_counts_the_rest(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="discovery")
    rejects_before = metrics.rejects.get("lds")
    client = xds.sotw()
    await client.request(LISTENER)
    response = await client.recv()
    huge = "listener rejected: " + "x" * (1024 * 1024)
    for _ in range(100):
        await client.request(LISTENER, nonce=response.nonce, version=response.version_info, error=huge)
    await until(lambda: metrics.rejects.get("lds") - rejects_before >= 100)

    (status,) = xds.service.syncz()
    error = status["types"]["LDS"]["error"]
    assert status["types"]["LDS"]["status"] == "NACKED" and error.startswith("listener rejected: xxx")
    assert len(error) < 1100 and "more characters]" in error

    nack_lines = [r for r in caplog.records if "rejected by proxy" in r.getMessage()]
    assert len(nack_lines) == 1
    logged = nack_lines[0].error  # type: ignore[attr-defined]
    assert logged.startswith("listener rejected: xxx") and len(logged) < 1100  # the proxy's own words, cut
    await client.close()
    await until(lambda: not xds.service.streams)
    await until(lambda: any(r.getMessage() == "xDS stream closed" for r in caplog.records))
    closed = next(r for r in caplog.records if r.getMessage() == "xDS stream closed")
    assert closed.suppressed_warnings == 99  # type: ignore[attr-defined]
    assert sum(len(r.getMessage()) + len(str(vars(r))) for r in caplog.records) < 64 * 1024


def test_the_log_throttle_reports_what_it_held_back() -> None:
    now = [0.0]
    throttle = LogThrottle(interval=10.0, clock=lambda: now[0])
    assert throttle.allow("nack lds") == 0
    assert [throttle.allow("nack lds") for _ in range(5)] == [None] * 5
    assert throttle.allow("nack cds") == 0  # another key has its own budget
    assert throttle.held() == 5
    now[0] = 10.0
    assert throttle.allow("nack lds") == 5 and throttle.held() == 0


# -- node metadata -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "details"),
    [
        (node(LABELS={f"k{i}": "v" * 64 for i in range(1_000)}), ("node.metadata is", "the limit is 65536 bytes")),
        (
            node(INSTANCE_IPS=",".join(f"10.2.{i // 250}.{i % 250}" for i in range(65))),
            ("node.metadata.INSTANCE_IPS lists 65 addresses", "at most 64"),
        ),
        (node(pod="p" * 2_000), ("node.id is", "the limit is 1024")),
    ],
)
async def test_oversized_nodes_are_invalid_argument_naming_the_field(
    xds: XdsHarness, bad: Any, details: tuple[str, ...]
) -> None:
    client = xds.sotw(bad)
    await client.request(CLUSTER)
    error = await refusal(client.recv)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert all(detail in (error.details() or "") for detail in details), error.details()


async def test_sixty_four_instance_ips_are_accepted(xds: XdsHarness) -> None:
    client = xds.sotw(node(INSTANCE_IPS=",".join(f"10.2.0.{i}" for i in range(1, 65))))
    await client.request(CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    (status,) = xds.service.syncz()
    assert status["proxy"] == "app-1.default"


# -- what the collector walks per stream ---------------------------------------------------------------

IDLE_STREAMS = 100
TRACKED_PER_IDLE_STREAM = 80  # measured: 66 (most of it gRPC's call state); 99 when each stream had its own task


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def live_requests() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, DiscoveryRequest))


def acked_all(watched: dict[str, Watched]) -> bool:
    return len(watched) == 4 and all(w.nonce_acked == w.nonce_sent for w in watched.values())


async def idle_streams(xds: XdsHarness, count: int) -> tuple[int, int, int]:
    """Objects the collector tracks in this process while `count` idle streams from another process are
    open, and after they are gone; and the requests alive while they are open."""
    clients = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.discovery.idle_streams",
        f"127.0.0.1:{xds.port}",
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert clients.stdout is not None and clients.stdin is not None
        async with asyncio.timeout(TIMEOUT):
            assert await clients.stdout.readline() == b"ready\n"
        assert len(xds.service.streams) == count
        # The clients say ready once they have sent their last ACKs; the server may not have read them yet.
        await until(lambda: all(acked_all(stream.conn.watched) for stream in xds.service.streams.values()))
        await asyncio.sleep(0.05)  # the handler that recorded the last ACK returns to its wait
        during, requests = tracked(), live_requests()
        clients.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            await clients.wait()
        await until(lambda: not xds.service.streams)
    finally:
        if clients.returncode is None:
            clients.kill()
            await clients.wait()
    return during, tracked(), requests


async def test_an_idle_stream_gives_the_collector_few_objects_to_walk() -> None:
    """Every full collection walks every tracked object on the event loop: at thousands of proxies, what
    one idle stream holds is what the pauses grow with. The clients run in another process, so only the
    server's objects are counted."""
    async with web_alone(limits=StreamLimits(streams_per_client=IDLE_STREAMS)) as xds:
        await idle_streams(xds, 5)  # what is made once, on first use, is not per stream
        before = tracked()
        during, after, _ = await idle_streams(xds, IDLE_STREAMS)
    per_stream = (during - before) / IDLE_STREAMS
    assert per_stream <= TRACKED_PER_IDLE_STREAM, f"{per_stream:.1f} tracked objects per idle stream"
    assert (after - before) / IDLE_STREAMS < 1, "streams left objects behind"


async def test_an_idle_stream_keeps_no_request() -> None:
    """A sidecar's last request is typically its EDS ACK, naming every cluster it knows (~50 KB with
    1,000 services): a stream that kept it while waiting for the next held that per proxy."""
    async with web_alone(limits=StreamLimits(streams_per_client=IDLE_STREAMS)) as xds:
        _, _, requests = await idle_streams(xds, 20)
    assert requests == 0


class RecordingTurns(TurnBudget):
    def __init__(self) -> None:
        super().__init__(REQUEST_UNITS_PER_TURN)
        self.taken: list[tuple[int, Hashable]] = []
        self.resumed: list[int] = []  # the indexes in `taken` of pieces that continue started work

    async def take(self, cost: int, owner: Hashable = None, *, resume: bool = False) -> None:
        if resume:
            self.resumed.append(len(self.taken))
        self.taken.append((cost, owner))
        await super().take(cost, owner, resume=resume)


async def test_work_on_names_takes_its_turn_by_the_names_and_the_client(xds: XdsHarness) -> None:
    """What keeps a burst of large requests from holding the event loop (`tests/e2e/test_stall_probe.py`
    shows the effect): reading a request's names, then generating what they ask for, is counted first,
    by the names and the client. An ACK generates nothing."""
    turns = RecordingTurns()
    xds.service.request_turns = turns
    client = "127.0.0.1"
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, cluster_names(16))
    response = await sotw.recv()
    await sotw.ack(response, cluster_names(16))
    await sotw.request(ENDPOINT, cluster_names(24), nonce=response.nonce, version=response.version_info)
    await sotw.recv()  # the 8 added names
    assert turns.taken == [
        (reading(16), client),
        (generating(16), client),
        (reading(16), client),  # the ACK: read, nothing generated
        (reading(24), client),
        (generating(8), client),
    ]
    turns.taken.clear()
    delta = xds.delta(node("app-2", ip="10.1.0.2"))
    await delta.request(
        ENDPOINT, subscribe=cluster_names(12), unsubscribe=["c"], initial={"d": "1"} | {f"e{i}": "1" for i in range(2)}
    )
    response = await delta.recv()
    await delta.request(ENDPOINT, nonce=response.nonce)  # an ACK: no names
    await delta.request(ENDPOINT, subscribe=cluster_names(1, prefix="more"))
    await delta.recv()  # requests are handled in order: the ACK was handled by now
    assert turns.taken == [(reading(16), client), (generating(12), client), (generating(13), client)]
    assert reading(16) == 2 and generating(8) == REQUEST_BASE_UNITS + 8 and generating(0) == 0


async def test_a_push_takes_its_turn_by_the_names_as_an_answer_does(xds: XdsHarness) -> None:
    """Pushes to many streams start together: 20 proxies' pushes of 4,000 assignments each, all in
    one turn of the event loop, held it 650 ms. Each push of a type takes its turn by the names the
    stream subscribes to (a wildcard type's, shared through the cache, by none)."""
    xds.apply(m.service("pushed", cluster_ip="10.96.5.5"), m.endpoint_slice("pushed", ips=["10.1.5.1"]))
    names = ["outbound|80||pushed.default.svc.cluster.local", *cluster_names(15)]
    turns = RecordingTurns()
    xds.service.request_turns = turns
    sotw = xds.sotw()
    await sotw.request(CLUSTER, [])
    await sotw.ack(await sotw.recv())
    await sotw.request(ENDPOINT, names)
    await sotw.ack(await sotw.recv(), names)
    turns.taken.clear()
    xds.apply(m.endpoint_slice("pushed", ips=["10.1.5.1", "10.1.5.2"]))  # an endpoints-only change: EDS alone
    pushed = await sotw.recv()
    assert assignment_names(pushed) == ["outbound|80||pushed.default.svc.cluster.local"]
    acks = (reading(16), "127.0.0.1")  # reading the EDS ACK, which may be handled after the clear
    assert [taken for taken in turns.taken if taken != acks] == [(generating(16), "127.0.0.1")]
    turns.taken.clear()
    xds.apply(m.service("added", cluster_ip="10.96.5.6"))  # CDS, a wildcard type, alone
    cds = await sotw.recv()
    assert cds.type_url == CLUSTER and "outbound|80||added.default.svc.cluster.local" in cluster_names_of(cds)
    # no names, so no turn for them; the clusters built anew, in one piece (fewer than PIECE_SERVICES)
    assert [taken for taken in turns.taken if taken != acks] == [(REQUEST_UNITS_PER_TURN, "127.0.0.1")]


async def test_clusters_built_anew_are_built_a_piece_of_services_per_turn(xds: XdsHarness) -> None:
    """Every cluster built anew at once (every Service's identities changed: 4,000 clusters) took
    120-180 ms in one turn. The clusters of `PIECE_SERVICES` Services are built per turn, each piece a
    turn's work alone; proxies asking once the clusters are kept build nothing."""
    count = 2 * PIECE_SERVICES + 50
    xds.apply(*(m.service(f"s{i}", cluster_ip=f"10.97.{i // 250}.{i % 250 + 1}") for i in range(count)))
    turns = RecordingTurns()
    xds.service.request_turns = turns
    services = len(xds.service.snapshot().services)
    pieces = -(-services // PIECE_SERVICES)
    for proxy in range(3):  # the group is kept from the second time it is asked for
        turns.taken.clear()
        sotw = xds.sotw(node(f"app-{proxy + 2}", ip=f"10.1.0.{proxy + 2}"))
        await sotw.request(CLUSTER, [])
        response = await sotw.recv()
        assert "outbound|80||s449.default.svc.cluster.local" in cluster_names_of(response)
        built = [taken for taken in turns.taken if taken == (REQUEST_UNITS_PER_TURN, "127.0.0.1")]
        assert len(built) == (pieces if proxy < 2 else 0), (proxy, turns.taken)
        assert all(index in turns.resumed for index, taken in enumerate(turns.taken) if taken in built)


def assignment_names(response: Any) -> list[str]:
    return [endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name for r in response.resources]


def pieces_of(turns: RecordingTurns, start: int) -> list[int]:
    """The costs of the pieces of one answer whose first piece is `turns.taken[start]`."""
    end = start + 1
    while end in turns.resumed:
        end += 1
    return [cost for cost, _ in turns.taken[start:end]]


class PieceClock:
    """Stands in for `time.perf_counter` in `discovery.stream`: the pieces of an answer read it before
    and after each piece, and the n-th piece appears to take `took[n]` seconds."""

    def __init__(self, took: list[float]) -> None:
        self.took = took
        self.reads = 0
        self.now = 1_000.0  # as a real clock, far from zero

    def perf_counter(self) -> float:
        if self.reads % 2:
            self.now += self.took[min(self.reads // 2, len(self.took) - 1)]
        self.reads += 1
        return self.now


async def test_a_large_answer_is_generated_in_pieces_each_taking_its_turn(
    xds: XdsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building 10,000 assignments the cache does not hold took ~100 ms in one piece of work, which held
    the event loop (and `/ready`) past 250 ms: an answer of more than `PIECE_NAMES` names is generated a
    piece of names at a time, each piece after the first at the highest cost a piece before it took, and
    a SotW subscription that grows by that many is answered the same way. The answers are whole and in
    order."""
    clock = PieceClock(took=[0.020, 0.001])  # the first piece is slow (not cached), the next quick
    monkeypatch.setattr(stream_module, "time", SimpleNamespace(perf_counter=clock.perf_counter, time=time.time))
    turns = RecordingTurns()
    xds.service.request_turns = turns
    names = cluster_names(2 * PIECE_NAMES + 500)
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, names)
    response = await sotw.recv()
    assert assignment_names(response) == sorted(names)
    assert turns.taken[0] == (reading(len(names)), "127.0.0.1")
    first, second, third, joined = pieces_of(turns, 1)  # three pieces of names, then their bytes joined
    assert first == generating(PIECE_NAMES)
    assert second == third == units_of(0.020)  # what the slow first piece took, also after a quick one
    assert joined == reading(len(names))
    monkeypatch.undo()

    turns.taken.clear()
    turns.resumed.clear()
    more = cluster_names(PIECE_NAMES + 1, prefix="more")
    await sotw.request(ENDPOINT, names + more, nonce=response.nonce, version=response.version_info)
    grown = await sotw.recv()
    assert assignment_names(grown) == sorted(more)  # the added names alone
    assert len(pieces_of(turns, 1)) == 2  # two pieces; nothing joined (the answer is not kept)

    names = cluster_names(2 * PIECE_NAMES + 500, prefix="delta")
    for i in range(3):  # Delta: the first two answers are put together from pieces, the third is kept
        turns.taken.clear()
        turns.resumed.clear()
        delta = xds.delta(node(f"app-{i + 2}", ip=f"10.1.0.{i + 2}"))
        await delta.request(ENDPOINT, subscribe=names)
        answered = await delta.recv()
        assert sorted(r.name for r in answered.resources) == sorted(names)
        assert not answered.removed_resources  # every subscribed name exists (an empty assignment at worst)
        assert len(pieces_of(turns, 1)) == (4 if i < 2 else 1)


async def test_answers_up_to_a_piece_or_of_wildcard_types_are_one_piece(xds: XdsHarness) -> None:
    """An answer of `PIECE_NAMES` names is generated at once, and so is any answer of a type whose
    generator builds it whole (CDS, here asked for by 1,001 names), which is not cut by the names
    (its clusters, if built anew, by the Services: here one piece)."""
    turns = RecordingTurns()
    xds.service.request_turns = turns
    client = "127.0.0.1"
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, cluster_names(PIECE_NAMES))
    assert len((await sotw.recv()).resources) == PIECE_NAMES
    await sotw.request(CLUSTER, cluster_names(PIECE_NAMES + 1))
    assert (await sotw.recv()).type_url == CLUSTER  # answered (none of the names exists)
    assert turns.taken == [
        (reading(PIECE_NAMES), client),
        (generating(PIECE_NAMES), client),
        (reading(PIECE_NAMES + 1), client),
        (generating(PIECE_NAMES + 1), client),
        (REQUEST_UNITS_PER_TURN, client),
    ]


async def test_proxies_asking_for_the_same_large_answer_share_it(xds: XdsHarness) -> None:
    """The proxies of a large mesh subscribe to the same names: once two have asked, the answer is kept
    whole, and the next proxy takes it as it is, in one piece."""
    turns = RecordingTurns()
    xds.service.request_turns = turns
    names = cluster_names(3 * PIECE_NAMES)
    answers = []
    for i in range(3):
        turns.taken.clear()
        turns.resumed.clear()
        sotw = xds.sotw(node(f"app-{i}", ip=f"10.1.0.{i + 2}"))
        await sotw.request(ENDPOINT, names)
        answers.append((await sotw.recv(), pieces_of(turns, 1)))
    (first, built), (second, rebuilt), (third, taken) = answers
    assert len(built) == len(rebuilt) == 4  # three pieces and the join; the second answer is kept
    assert taken == [generating(PIECE_NAMES)]
    assert first.resources == second.resources == third.resources


async def test_an_answer_between_pieces_takes_what_another_proxy_put_together_meanwhile(xds: XdsHarness) -> None:
    """Proxies connecting together ask for the same names at once: a stream between two pieces of its
    answer takes the whole answer once other proxies' requests have made the cache keep it, and stops
    building its own."""
    names = cluster_names(3 * PIECE_NAMES)
    others: list[Any] = []
    started: list[bool] = []

    class OthersMeanwhile(RecordingTurns):
        async def take(self, cost: int, owner: Hashable = None, *, resume: bool = False) -> None:
            if resume and not started:  # before this stream's second piece: two others ask and are answered
                started.append(True)
                for i in range(2):
                    other = xds.sotw(node(f"other-{i}", ip=f"10.1.1.{i + 2}"))
                    await other.request(ENDPOINT, names)
                    others.append(await other.recv())
            await super().take(cost, owner, resume=resume)

    turns = OthersMeanwhile()
    xds.service.request_turns = turns
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, names)
    answer = await sotw.recv()
    assert answer.resources == others[0].resources == others[1].resources
    others_resumed = 2 * (2 + 1)  # each other proxy built its answer: two more pieces and the join
    assert len(turns.resumed) - others_resumed == 1  # this stream: the turn it took the kept answer in, no more


async def test_a_grown_subscription_gets_the_added_names_even_when_the_whole_is_kept(xds: XdsHarness) -> None:
    """A SotW client keeps what it has: when its subscription grows, the answer carries the added names
    alone, also when the cache keeps the whole new subscription (other proxies asked for it)."""
    old = cluster_names(PIECE_NAMES // 2, prefix="old")
    added = cluster_names(PIECE_NAMES + 100, prefix="added")
    for i in range(2):  # the whole new subscription, asked for twice: kept
        other = xds.sotw(node(f"other-{i}", ip=f"10.1.1.{i + 2}"))
        await other.request(ENDPOINT, old + added)
        assert len((await other.recv()).resources) == len(old + added)
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, old)
    first = await sotw.recv()
    await sotw.request(ENDPOINT, old + added, nonce=first.nonce, version=first.version_info)
    assert assignment_names(await sotw.recv()) == sorted(added)


async def test_a_piecewise_answer_comes_from_one_snapshot_and_a_change_meanwhile_follows(xds: XdsHarness) -> None:
    """The model may change between the pieces of an answer: the answer is the snapshot's it started
    from, labelled with that snapshot's version, and the change reaches the client as a push after it."""
    late = "outbound|80||zz-late.default.svc.cluster.local"  # last in name order: in the last piece
    names = [*cluster_names(PIECE_NAMES + 10), late]

    class ChangingTurns(RecordingTurns):
        async def take(self, cost: int, owner: Hashable = None, *, resume: bool = False) -> None:
            if resume and not self.resumed:  # before the second piece
                xds.apply(m.service("zz-late", cluster_ip="10.96.0.77"), m.endpoint_slice("zz-late", ips=["10.1.7.7"]))
            await super().take(cost, owner, resume=resume)

    xds.service.request_turns = ChangingTurns()
    before = xds.registry.snapshot().version
    sotw = xds.sotw()
    await sotw.request(ENDPOINT, names)
    answer = await sotw.recv()
    assert answer.version_info == str(before)
    assignments = {
        a.cluster_name: a
        for a in map(endpoint_pb2.ClusterLoadAssignment.FromString, (r.value for r in answer.resources))
    }
    assert len(assignments) == len(names) and not assignments[late].endpoints
    await sotw.ack(answer, names)
    push = await sotw.recv()
    assert int(push.version_info) > before
    (pushed,) = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value) for r in push.resources]
    assert pushed.cluster_name == late
    assert [e.endpoint.address.socket_address.address for g in pushed.endpoints for e in g.lb_endpoints] == ["10.1.7.7"]
