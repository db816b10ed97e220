"""Delta streams in the same state share the map of what their clients know (`delta.KnownVersions`).

With 1,000 services a Delta sidecar knows two maps of 1,000 names; a thousand sidecars holding a copy
each is a thousand times that. Streams that start alike and are sent the same resources hold one map;
a stream whose client knows something else holds its own, and what each map says stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import wrappers_pb2

from discovery.cache import Resource
from discovery.delta import KnownVersions
from discovery.xdstypes import CLUSTER, ENDPOINT
from tests.discovery import meshdata as m
from tests.discovery.harness import API, WEB, DeltaClient, XdsHarness, node, web_and_api
from tests.discovery.test_bounds import until


def known(xds: XdsHarness, pod: str, type_url: str) -> Mapping[str, str]:
    stream = next(s for s in xds.service.streams.values() if s.conn and s.conn.proxy.pod_name == pod)
    assert stream.conn is not None
    return stream.conn.watched[type_url].known


async def synced(client: DeltaClient, type_url: str, subscribe: list[str] | None = None) -> None:
    await client.request(type_url, subscribe=subscribe or [])
    await client.ack(await client.recv())


async def test_streams_sent_the_same_resources_share_one_map_and_one_that_differs_has_its_own() -> None:
    async with web_and_api() as xds:
        pods = ("a", "b", "c")
        clients = {pod: xds.delta(node(pod=pod, ip=f"10.5.0.{n + 1}")) for n, pod in enumerate(pods)}
        for client in clients.values():
            await synced(client, CLUSTER)
        await synced(clients["a"], ENDPOINT, [WEB, API])
        await synced(clients["b"], ENDPOINT, [WEB, API])
        await synced(clients["c"], ENDPOINT, [WEB])
        assert known(xds, "a", CLUSTER) is known(xds, "b", CLUSTER) is known(xds, "c", CLUSTER)
        assert known(xds, "a", ENDPOINT) is known(xds, "b", ENDPOINT)
        assert set(known(xds, "c", ENDPOINT)) == {WEB}

        xds.apply(m.service("shop", cluster_ip="10.96.0.3"))  # a push, then each client's ACK
        for client in clients.values():
            await client.ack(await client.recv())
        shop = "outbound|80||shop.default.svc.cluster.local"
        await until(lambda: all(shop in known(xds, pod, CLUSTER) for pod in pods))
        assert known(xds, "a", CLUSTER) is known(xds, "b", CLUSTER) is known(xds, "c", CLUSTER)

        await clients["b"].request(ENDPOINT, unsubscribe=[API])  # no response; b's map loses API
        await synced(clients["b"], CLUSTER)  # a reconnect-like request answered after it: handled in order
        await until(lambda: set(known(xds, "b", ENDPOINT)) == {WEB})
        assert set(known(xds, "a", ENDPOINT)) == {WEB, API}


def resource(name: str, content: str) -> Resource:
    return Resource(type_url=CLUSTER, name=name, message=wrappers_pb2.StringValue(value=content))


def test_the_next_map_is_the_same_object_only_from_the_same_map() -> None:
    table = KnownVersions()
    x1, y1, y2, z1 = resource("x", "1"), resource("y", "1"), resource("y", "2"), resource("z", "1")
    start = table.after({}, [x1, y1], ())
    assert dict(start) == {"x": x1.version, "y": y1.version}
    assert table.after(start, [y2], ["x"]) is table.after(start, [y2], ["x"])
    assert dict(table.after(start, [y2], ["x"])) == {"y": y2.version}
    assert table.after(start, [y1], ()) is not table.after(start, [y2], ())
    copy = dict(start)  # equal content, another object: not taken for `start`
    assert table.after(copy, [z1], ()) is not table.after(start, [z1], ())
    assert dict(table.after(copy, [z1], ())) == dict(table.after(start, [z1], ()))


def test_the_table_is_bounded_by_its_byte_estimate() -> None:
    table = KnownVersions(max_bytes=50 * KnownVersions.NAME_BYTES)
    for n in range(100):
        table.after({}, [resource(f"r{n}-{i}", "1") for i in range(10)], ())  # 20 names held each
    assert len(table) == 2
    big = table.after({}, [resource(f"big-{i}", "1") for i in range(100)], ())  # over the bound: not kept
    assert len(big) == 100 and len(table) == 2


def test_a_transition_of_exactly_the_bound_is_kept_until_another_comes() -> None:
    empty: dict[str, str] = {}
    a, b = resource("a", "1"), resource("b", "1")
    table = KnownVersions(max_bytes=2 * KnownVersions.NAME_BYTES)  # one name added: the map after it, and the name
    first = table.after(empty, [a], ())
    assert table.after(empty, [a], ()) is first and len(table) == 1
    table.after(empty, [b], ())  # the bound holds one such transition: the older goes
    assert len(table) == 1 and table.after(empty, [a], ()) is not first
