"""Which pushes reach which proxy: every generator's `needs_push`, one table row per kind of change.

A wrong answer here is silent on the wire: a proxy that should have been pushed keeps stale config
(a service change reaching only the endpoints' subscribers), or every proxy is pushed for a change
that concerns one. So each kind of change is checked against each generator table, including the
full push with no particular update (an operator's forced push) and merged requests.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import pytest

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind
from discovery.connection import Connection, DeltaRequest, SyncStatus, Watched, should_respond_delta
from discovery.connection import Decision as D
from discovery.generators import GRPC, ROUTER, SIDECAR, ProxyView
from discovery.pushqueue import PushQueue, PushRequest
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.world import World, proxy

WEB = "web.default.svc.cluster.local"
DB = "db.default.svc.cluster.local"
WEB_CLUSTER = f"outbound|80||{WEB}"
OWN_IP, OTHER_IP = "10.1.0.1", "10.1.0.9"


def change(kind: UpdateKind, name: str) -> PushRequest:
    return PushRequest.from_change(ModelChange(updates=frozenset({ConfigUpdate(kind, name)}), version=1), now=0.0)


REQUESTS = {
    "service": change(UpdateKind.SERVICE, DB),
    "subscribed service": change(UpdateKind.SERVICE, WEB),
    "mesh": change(UpdateKind.MESH, ""),
    "policy": change(UpdateKind.POLICY, "default/strict"),
    "own workload": change(UpdateKind.WORKLOAD, OWN_IP),
    "other workload": change(UpdateKind.WORKLOAD, OTHER_IP),
    "subscribed endpoints": change(UpdateKind.ENDPOINTS, WEB),
    "other endpoints": change(UpdateKind.ENDPOINTS, DB),
    "everything": PushRequest.everything(now=0.0),
    "tls of subscribed": PushRequest(updates=frozenset(), full=False, start=0.0, tls_changed=frozenset({WEB})),
    "policy and endpoints": change(UpdateKind.POLICY, "default/strict").merge(change(UpdateKind.ENDPOINTS, WEB)),
}

# Expected answer per table and type for each request above, in REQUESTS' order.
#                    service sub-svc mesh  policy own-wl other-wl sub-eps other-eps everything tls policy+eps
EXPECTED = {
    ("sidecar", CLUSTER): (1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1),
    ("sidecar", ENDPOINT): (0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1),
    ("sidecar", LISTENER): (1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1),
    ("sidecar", ROUTE): (1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0),
    ("router", CLUSTER): (1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1),
    ("router", ENDPOINT): (0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1),
    ("grpc", CLUSTER): (1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0),
    ("grpc", ENDPOINT): (0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1),
    ("grpc", LISTENER): (1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0),
    ("grpc", ROUTE): (1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0),
}
TABLES = {"sidecar": SIDECAR, "router": ROUTER, "grpc": GRPC}


@pytest.fixture(scope="module")
def view() -> ProxyView:
    world = World(
        m.service("web", cluster_ip="10.96.0.1"),
        m.pod("web-1", OWN_IP, app="web", sa="web-sa", ports={"http": 8080}),
        m.endpoint_slice("web", ips=[OWN_IP]),
    )
    return ProxyView.build(proxy(), world.registry.snapshot())


@pytest.mark.parametrize(("table", "type_url"), list(EXPECTED), ids=[f"{t}-{u.rsplit('.', 1)[1]}" for t, u in EXPECTED])
def test_each_kind_of_change_reaches_exactly_the_proxies_it_concerns(
    view: ProxyView, table: str, type_url: str
) -> None:
    generator = TABLES[table][type_url]
    watched = Watched(type_url=type_url, names=frozenset({WEB_CLUSTER}), wildcard=type_url in (CLUSTER, LISTENER))
    got = {name: generator.needs_push(request, view, watched) for name, request in REQUESTS.items()}
    expected = {name: bool(flag) for name, flag in zip(REQUESTS, EXPECTED[table, type_url], strict=True)}
    assert got == expected


async def test_a_service_change_merged_into_endpoint_pushes_still_reaches_every_type(view: ProxyView) -> None:
    queue: PushQueue[str] = PushQueue()
    queue.enqueue("c", change(UpdateKind.ENDPOINTS, DB))
    queue.enqueue("c", change(UpdateKind.SERVICE, DB))
    queue.enqueue("c", change(UpdateKind.ENDPOINTS, WEB))
    assert len(queue) == 1
    _, merged = await queue.dequeue()
    assert merged.full and merged.merged == 3
    watched = Watched(type_url=ENDPOINT, names=frozenset({WEB_CLUSTER}))
    assert all(SIDECAR[t].needs_push(merged, view, watched) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE))


async def test_the_queue_counts_a_busy_connections_waiting_push() -> None:
    queue: PushQueue[str] = PushQueue()
    queue.enqueue("a", change(UpdateKind.SERVICE, WEB))
    queue.enqueue("b", change(UpdateKind.SERVICE, WEB))
    conn, _ = await queue.dequeue()
    queue.enqueue(conn, change(UpdateKind.SERVICE, DB))  # waits until `done`
    assert len(queue) == 2  # the other connection's push and the busy one's
    queue.remove(conn)
    assert len(queue) == 1


def test_a_forced_push_is_full_and_names_no_update() -> None:
    forced = PushRequest.everything(now=7.0)
    assert forced.full and forced.updates == frozenset() and forced.start == 7.0
    assert isinstance(PushRequest.everything().start, float)  # now, when not given
    assert str(forced) == "full push ()"


def test_merging_keeps_the_newest_version_and_every_tls_change() -> None:
    older = replace(change(UpdateKind.ENDPOINTS, WEB), version=3, tls_changed=frozenset({WEB}))
    newer = replace(change(UpdateKind.SERVICE, DB), version=5, tls_changed=frozenset({DB}))
    for merged in (older.merge(newer), newer.merge(older)):
        assert merged.version == 5 and merged.tls_changed == {WEB, DB}
        assert merged.has(UpdateKind.SERVICE) and merged.has(UpdateKind.POLICY, UpdateKind.ENDPOINTS)
        assert not merged.has(UpdateKind.POLICY, UpdateKind.MESH)


def test_a_pushs_updates_are_freed_with_it_once_the_generators_have_read_them() -> None:
    """A rollout's push names every changed Pod: tens of thousands of updates. What the generators
    work out from them (the names of each kind) belongs to the request, and nothing keeps them once
    the request is gone (a cache keyed by the update set kept those of the last 256 pushes alive)."""
    workloads = {ConfigUpdate(UpdateKind.WORKLOAD, f"10.2.{i // 250}.{i % 250}") for i in range(1_000)}
    updates = frozenset({*workloads, ConfigUpdate(UpdateKind.ENDPOINTS, WEB)})
    kept = weakref.ref(next(iter(workloads)))
    request = PushRequest.from_change(ModelChange(updates=updates, version=1), now=0.0)
    assert request.of_kind(UpdateKind.ENDPOINTS) == {WEB} and request.of_kind(UpdateKind.SERVICE) == set()
    assert request.of_kind(UpdateKind.WORKLOAD) == {u.name for u in workloads}
    assert request.has(UpdateKind.MESH, UpdateKind.WORKLOAD) and not request.has(UpdateKind.MESH, UpdateKind.POLICY)
    del request, updates, workloads
    assert kept() is None


def test_a_connections_status_is_per_type() -> None:
    conn = Connection(
        id="c",
        proxy=proxy(),
        peer="test",
        connected_at=0.0,
        delta=False,
        watched={
            CLUSTER: Watched(type_url=CLUSTER, nonce_sent="2", nonce_acked="2"),
            ENDPOINT: Watched(type_url=ENDPOINT, nonce_sent="3", nonce_acked="2"),
            ROUTE: Watched(type_url=ROUTE),
        },
    )
    assert conn.status() == {CLUSTER: SyncStatus.SYNCED, ENDPOINT: SyncStatus.STALE, ROUTE: SyncStatus.NOT_SENT}


SUBSCRIBED = Watched(type_url=CLUSTER, names=frozenset({"a"}), nonce_sent="n1", version_sent="v1", error="old")


@pytest.mark.parametrize(
    ("watched", "req", "expected"),
    [
        (
            SUBSCRIBED,
            DeltaRequest(type_url=CLUSTER, response_nonce="n1", subscribe=("*",)),
            (D.NAMES_CHANGED, True, {"a"}, {"*"}),
        ),
        (
            SUBSCRIBED,
            DeltaRequest(type_url=CLUSTER, response_nonce="n1", subscribe=("b",)),
            (D.NAMES_CHANGED, False, {"a", "b"}, {"b"}),
        ),
        (
            replace(SUBSCRIBED, wildcard=True),
            DeltaRequest(type_url=CLUSTER, response_nonce="n1", subscribe=("*",)),
            (D.ACK, True, {"a"}, set()),
        ),
        (
            replace(SUBSCRIBED, wildcard=True),
            DeltaRequest(type_url=CLUSTER, response_nonce="n1", unsubscribe=("*",)),
            (D.ACK, False, {"a"}, set()),
        ),
    ],
    ids=["subscribe-wildcard", "subscribe-name", "wildcard-again", "unsubscribe-wildcard"],
)
def test_delta_wildcard_subscriptions(watched: Watched, req: DeltaRequest, expected: tuple[object, ...]) -> None:
    """(decision, wildcard, names, names newly subscribed) after one request."""
    got, state, new = should_respond_delta(watched, req)
    assert (got, state.wildcard, set(state.names), set(new)) == expected


def test_a_delta_ack_records_what_was_acknowledged_and_clears_the_nack() -> None:
    _, state, _ = should_respond_delta(SUBSCRIBED, DeltaRequest(type_url=CLUSTER, response_nonce="n1"))
    assert (state.nonce_acked, state.version_acked, state.error) == ("n1", "v1", None)


@pytest.mark.parametrize("watched", [None, SUBSCRIBED], ids=["first-request", "later"])
def test_a_delta_nack_is_recorded_and_not_answered(watched: Watched | None) -> None:
    req = DeltaRequest(type_url=CLUSTER, response_nonce="n1", subscribe=("a",), error="bad cluster")
    got, state, added = should_respond_delta(watched, req)
    assert (got, state.type_url, state.error, added) == (D.NACK, CLUSTER, "bad cluster", set())
