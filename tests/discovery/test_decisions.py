"""The pure parts: should_respond tables, sync status, node parsing, response encoding, push merging."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind
from discovery.cache import Resource, ResourceGroup, XdsCache
from discovery.connection import (
    Decision,
    DeltaRequest,
    SotwRequest,
    SyncStatus,
    Watched,
    should_respond,
    should_respond_delta,
    sync_status,
)
from discovery.proxy import InterceptionMode, NodeError, parse_node
from discovery.pushqueue import Debouncer, PushQueue, PushRequest
from discovery.xdstypes import CLUSTER, ENDPOINT
from tests.discovery.harness import node

SENT = Watched(type_url=ENDPOINT, names=frozenset({"a"}), nonce_sent="n1", version_sent="v1")


@pytest.mark.parametrize(
    ("previous", "req", "decision"),
    [
        (None, SotwRequest(type_url=ENDPOINT, resource_names=("a",)), Decision.INITIAL),
        (SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a",), response_nonce="n1"), Decision.ACK),
        (SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a", "b"), response_nonce="n1"), Decision.NAMES_CHANGED),
        (SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a", "b"), response_nonce="old"), Decision.STALE),
        (SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a",), version_info="v0"), Decision.RECONNECT),
        (SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a",), response_nonce="n1", error="bad"), Decision.NACK),
        (None, SotwRequest(type_url=ENDPOINT, resource_names=("a",), error="bad"), Decision.NACK),
    ],
)
def test_sotw_should_respond(previous: Watched | None, req: SotwRequest, decision: Decision) -> None:
    got, state = should_respond(previous, req)
    assert got is decision
    assert got.respond == (decision in (Decision.INITIAL, Decision.NAMES_CHANGED, Decision.RECONNECT))
    if decision is Decision.ACK:
        assert state.nonce_acked == "n1"
    if decision is Decision.NACK:
        assert state.error == "bad"
    if decision is Decision.STALE:
        assert state is previous


def test_sotw_wildcard_types_treat_empty_and_star_as_everything() -> None:
    _, empty = should_respond(None, SotwRequest(type_url=CLUSTER))
    _, star = should_respond(None, SotwRequest(type_url=CLUSTER, resource_names=("*",)))
    _, named_eds = should_respond(None, SotwRequest(type_url=ENDPOINT))
    assert empty.wildcard and star.wildcard and not named_eds.wildcard


def test_ack_after_nack_clears_the_error_and_status_follows() -> None:
    _, nacked = should_respond(
        SENT, SotwRequest(type_url=ENDPOINT, resource_names=("a",), response_nonce="n1", error="x")
    )
    assert sync_status(nacked) is SyncStatus.NACKED
    resent = nacked.sent(nonce="n2", version="v2")
    _, acked = should_respond(resent, SotwRequest(type_url=ENDPOINT, resource_names=("a",), response_nonce="n2"))
    assert sync_status(acked) is SyncStatus.SYNCED and acked.error is None
    assert sync_status(None) is SyncStatus.NOT_SENT
    assert sync_status(replace(acked, nonce_sent="n3")) is SyncStatus.STALE


DELTA_SENT = Watched(type_url=ENDPOINT, names=frozenset({"a"}), nonce_sent="n1", known={"a": "1"})


@pytest.mark.parametrize(
    ("req", "decision", "names", "added"),
    [
        (DeltaRequest(type_url=ENDPOINT, response_nonce="n1"), Decision.ACK, {"a"}, set()),
        (
            DeltaRequest(type_url=ENDPOINT, response_nonce="n1", subscribe=("b",)),
            Decision.NAMES_CHANGED,
            {"a", "b"},
            {"b"},
        ),
        (
            DeltaRequest(type_url=ENDPOINT, response_nonce="old", subscribe=("b",)),
            Decision.NAMES_CHANGED,
            {"a", "b"},
            {"b"},
        ),
        (DeltaRequest(type_url=ENDPOINT, response_nonce="old", unsubscribe=("a",)), Decision.STALE, set(), set()),
        (DeltaRequest(type_url=ENDPOINT, response_nonce="n1", unsubscribe=("a",)), Decision.ACK, set(), set()),
        (DeltaRequest(type_url=ENDPOINT, response_nonce="n1", error="bad"), Decision.NACK, {"a"}, set()),
    ],
)
def test_delta_should_respond(req: DeltaRequest, decision: Decision, names: set[str], added: set[str]) -> None:
    got, state, new = should_respond_delta(DELTA_SENT, req)
    assert (got, set(state.names), set(new)) == (decision, names, added)
    if "a" in req.unsubscribe:
        assert "a" not in state.known


def test_delta_first_request_keeps_initial_versions() -> None:
    got, state, added = should_respond_delta(None, DeltaRequest(type_url=CLUSTER, initial_versions={"c": "v"}))
    assert got is Decision.INITIAL and state.wildcard and dict(state.known) == {"c": "v"} and added == frozenset()


def test_delta_streams_keep_sharing_the_map_of_what_their_clients_know_until_names_leave_it() -> None:
    # Streams whose first request names no versions start from one empty map, so those then sent the same
    # resources reach one map too (`delta.KnownVersions` goes by the previous map's identity).
    _, first, _ = should_respond_delta(None, DeltaRequest(type_url=CLUSTER))
    _, second, _ = should_respond_delta(None, DeltaRequest(type_url=ENDPOINT, subscribe=("a",)))
    assert first.known is second.known and dict(first.known) == {}
    # Unsubscribing names the client does not have, or subscribing more, leaves the map as it is.
    for req in (
        DeltaRequest(type_url=ENDPOINT, response_nonce="n1", unsubscribe=("b",)),
        DeltaRequest(type_url=ENDPOINT, response_nonce="n1", subscribe=("b",)),
    ):
        _, state, _ = should_respond_delta(DELTA_SENT, req)
        assert state.known is DELTA_SENT.known, req
    _, state, _ = should_respond_delta(DELTA_SENT, DeltaRequest(type_url=ENDPOINT, unsubscribe=("a", "b")))
    assert dict(state.known) == {}


def test_node_parsing_reads_istio_metadata() -> None:
    proxy = parse_node(
        node(
            pod="web-1",
            ns="shop",
            ip="10.0.0.7",
            SERVICE_ACCOUNT="web",
            INTERCEPTION_MODE="NONE",
            LABELS={"app": "web"},
            INSTANCE_IPS="10.0.0.7,fd00::7",
            GENERATOR="grpc",
        )
    )
    assert (proxy.name, proxy.namespace, proxy.service_account) == ("web-1.shop", "shop", "web")
    assert proxy.interception_mode is InterceptionMode.NONE and proxy.proxyless
    assert proxy.ip_addresses == ("10.0.0.7", "fd00::7") and dict(proxy.labels) == {"app": "web"}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"INTERCEPTION_MODE": "MAGIC"}, "INTERCEPTION_MODE 'MAGIC'"),
        # it was answered with listeners Envoy cannot take TPROXY'd connections on
        ({"INTERCEPTION_MODE": "TPROXY"}, "INTERCEPTION_MODE 'TPROXY' is not supported for a sidecar"),
        ({"INSTANCE_IPS": "10.0.0.1,nope"}, "INSTANCE_IPS: 'nope'"),
        ({"LABELS": "app=web"}, "LABELS must be a map"),
        ({"SERVICE_ACCOUNT": 7}, "SERVICE_ACCOUNT must be a string"),
        ({"LOOPBACK_ADDRESS": "localhost"}, "LOOPBACK_ADDRESS 'localhost' is not an IPv4 or IPv6 address"),
        ({"LOOPBACK_ADDRESS": ["127.0.1.1"]}, "LOOPBACK_ADDRESS must be a string"),
        # A zone: Envoy refuses one naming an interface its machine lacks ("malformed IP address").
        ({"INSTANCE_IPS": "10.0.0.1,fd00::1%eth9"}, "INSTANCE_IPS: 'fd00::1%eth9' is not an IP address: a zone"),
        ({"LOOPBACK_ADDRESS": "::1%lo9"}, "LOOPBACK_ADDRESS '::1%lo9' is not an IPv4 or IPv6 address: a zone"),
    ],
)
def test_bad_node_metadata_names_the_key(metadata: dict[str, object], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        parse_node(node(**metadata))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (node(ns="shop\n"), "node.id namespace: 'shop\\n' is not a DNS-1123 label"),
        (node(pod="Web-1"), "node.id pod name: 'Web-1' is not a DNS-1123 subdomain"),
        (node(pod="-web"), "node.id pod name: '-web' is not a DNS-1123 subdomain"),
        (node(ns="s" * 64), "node.id namespace: '" + "s" * 64 + "' is not a DNS-1123 label"),
        (node(NAMESPACE="shop\n"), "node.metadata.NAMESPACE: 'shop\\n' is not a DNS-1123 label"),
        (node(NAMESPACE="caf\u00e9"), "node.metadata.NAMESPACE: 'caf\u00e9' is not a DNS-1123 label"),
        (node(SERVICE_ACCOUNT="web\n"), "node.metadata.SERVICE_ACCOUNT: 'web\\n' is not a DNS-1123 subdomain"),
        (node(SERVICE_ACCOUNT="Web"), "node.metadata.SERVICE_ACCOUNT: 'Web' is not a DNS-1123 subdomain"),
    ],
    ids=[
        "id-ns-newline",
        "pod-upper",
        "pod-dash",
        "ns-64",
        "meta-ns-newline",
        "meta-ns-unicode",
        "sa-newline",
        "sa-upper",
    ],
)
def test_node_names_follow_kubernetes_rules(bad: object, message: str) -> None:
    with pytest.raises(NodeError) as caught:
        parse_node(bad)
    assert str(caught.value).startswith(message)


def test_a_pod_name_with_dots_keeps_them_and_an_empty_service_account_is_allowed() -> None:
    proxy = parse_node(node(pod="web.v1-0", ns="shop", SERVICE_ACCOUNT=""))
    assert (proxy.pod_name, proxy.namespace, proxy.service_account) == ("web.v1-0", "shop", "")


def test_loopback_address_defaults_to_127_0_0_1_and_is_canonicalized() -> None:
    assert parse_node(node()).loopback == "127.0.0.1"
    assert parse_node(node(LOOPBACK_ADDRESS="127.0.1.5")).loopback == "127.0.1.5"
    assert parse_node(node(LOOPBACK_ADDRESS="0:0:0:0:0:0:0:1")).loopback == "::1"


def test_concatenated_cached_bytes_parse_as_the_same_response() -> None:
    clusters = [cluster_pb2.Cluster(name=f"c{i}", type=cluster_pb2.Cluster.EDS) for i in range(3)]
    group = ResourceGroup([Resource(type_url=CLUSTER, name=c.name, message=c) for c in clusters])
    header = discovery_pb2.DiscoveryResponse(version_info="7", type_url=CLUSTER, nonce="x").SerializeToString()
    parsed = discovery_pb2.DiscoveryResponse.FromString(group.blob + header)
    expected = discovery_pb2.DiscoveryResponse(version_info="7", type_url=CLUSTER, nonce="x")
    for c in clusters:
        expected.resources.add().Pack(c)
    assert parsed == expected
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(b"".join(r.delta_field for r in group.resources))
    assert [(r.name, r.version) for r in delta.resources] == [(r.name, r.version) for r in group.resources]
    assert delta.resources[0].resource == expected.resources[0]


def test_cache_rebuilds_only_when_the_key_changes() -> None:
    cache = XdsCache(max_resources=2)
    builds: list[str] = []

    def build(name: str) -> cluster_pb2.Cluster:
        builds.append(name)
        return cluster_pb2.Cluster(name=name)

    first = cache.resource(CLUSTER, "a", key=1, build=lambda: build("a"))
    assert cache.resource(CLUSTER, "a", key=1, build=lambda: build("a")) is first
    assert cache.resource(CLUSTER, "a", key=2, build=lambda: build("a")) is not first
    cache.resource(CLUSTER, "b", key=1, build=lambda: build("b"))
    cache.resource(CLUSTER, "c", key=1, build=lambda: build("c"))  # evicts the least recently used ("a")
    cache.resource(CLUSTER, "a", key=2, build=lambda: build("a"))
    assert builds == ["a", "a", "b", "c", "a"]


def request(*updates: ConfigUpdate, start: float = 0.0) -> PushRequest:
    return PushRequest.from_change(ModelChange(updates=frozenset(updates), version=1), now=start)


def test_push_requests_merge_to_cover_both() -> None:
    eds = request(ConfigUpdate(UpdateKind.ENDPOINTS, "a"), start=5)
    svc = request(ConfigUpdate(UpdateKind.SERVICE, "b"), start=3)
    merged = eds.merge(svc)
    assert merged.full and merged.start == 3 and merged.merged == 2
    assert merged.of_kind(UpdateKind.ENDPOINTS) == {"a"} and merged.of_kind(UpdateKind.SERVICE) == {"b"}
    assert not eds.full
    assert svc.merge(eds).full  # a full push merged into an endpoints-only one stays full, either way round


async def test_a_full_push_queued_behind_an_endpoints_only_one_stays_full_in_queue_and_debouncer() -> None:
    queue: PushQueue[str] = PushQueue()
    queue.enqueue("c", request(ConfigUpdate(UpdateKind.ENDPOINTS, "a")))
    queue.enqueue("c", request(ConfigUpdate(UpdateKind.SERVICE, "b")))
    _, merged = await queue.dequeue()
    assert merged.full  # else the service change would reach only the endpoints' subscribers

    emitted: list[PushRequest] = []
    debouncer = Debouncer(quiet=0, max_delay=0, emit=emitted.append)
    task = asyncio.create_task(debouncer.run())
    try:
        debouncer.add(request(ConfigUpdate(UpdateKind.ENDPOINTS, "a")))
        debouncer.add(request(ConfigUpdate(UpdateKind.SERVICE, "b")))
        for _ in range(100):
            if emitted:
                break
            await asyncio.sleep(0.01)
        assert emitted and all(e.full for e in emitted if e.of_kind(UpdateKind.SERVICE))
    finally:
        task.cancel()


async def test_push_queue_holds_one_merged_entry_per_connection() -> None:
    queue: PushQueue[str] = PushQueue()
    for n in range(100):
        queue.enqueue("slow", request(ConfigUpdate(UpdateKind.ENDPOINTS, f"s{n}")))
    queue.enqueue("fast", request(ConfigUpdate(UpdateKind.ENDPOINTS, "f")))
    assert len(queue) == 2
    conn, first = await queue.dequeue()
    assert conn == "slow" and first.merged == 100
    queue.enqueue("slow", request(ConfigUpdate(UpdateKind.SERVICE, "x")))  # arrives while busy
    queue.enqueue("slow", request(ConfigUpdate(UpdateKind.SERVICE, "y")))
    assert (await queue.dequeue())[0] == "fast"
    queue.done("slow")
    conn, again = await queue.dequeue()
    assert conn == "slow" and again.of_kind(UpdateKind.SERVICE) == {"x", "y"}


async def test_debouncer_with_zero_delay_merges_a_burst_into_one_push() -> None:
    emitted: list[PushRequest] = []
    debouncer = Debouncer(quiet=0, max_delay=0, emit=emitted.append)
    task = asyncio.create_task(debouncer.run())
    try:
        for n in range(10):
            debouncer.add(request(ConfigUpdate(UpdateKind.ENDPOINTS, f"e{n}")))
        for _ in range(100):
            if emitted:
                break
            await asyncio.sleep(0.01)
        assert len(emitted) == 1 and emitted[0].merged == 10
    finally:
        task.cancel()
