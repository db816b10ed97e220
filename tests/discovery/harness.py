"""An in-process xDS server on a real grpc.aio port, and raw ADS clients that speak to it.

`XdsHarness` wires ConfigStore → Registry → DiscoveryService (debounce 0) → AdsServer on a free
loopback port. `SotwClient` / `DeltaClient` drive one ADS stream by hand, so tests control every
nonce, version and subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from discovery.connection import StreamLimits
from discovery.server import AdsServer
from discovery.service import DiscoveryService
from tests.discovery import meshdata as m

TIMEOUT = 20.0
WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|80||api.default.svc.cluster.local"


def cluster_names(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    """The names of the Clusters a CDS response carries."""
    out = set()
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        resource.Unpack(cluster)
        out.add(cluster.name)
    return out


def node(
    pod: str = "app-1",
    ns: str = "default",
    ip: str = "10.1.0.1",
    *,
    node_type: str = "sidecar",
    **metadata: Any,
) -> base_pb2.Node:
    meta = struct_pb2.Struct()
    meta.update({"NAMESPACE": ns, "ISTIO_VERSION": "1.40.0", "CLUSTER_ID": "Kubernetes", **metadata})
    return base_pb2.Node(id=f"{node_type}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local", metadata=meta)


def lost_write_race(error: grpc.aio.AioRpcError) -> bool:
    """Whether grpcio reported its own INTERNAL ("Internal error from Core") for a write that raced the
    server ending the call, in place of the server's status. The secure port refuses a stream without
    credentials as it opens, before reading a request, so a client's first write can race that refusal;
    Envoy sees the server's status, grpcio's Python client may not. A caller opens the stream again."""
    return error.code() is grpc.StatusCode.INTERNAL and "execute_batch" in (error.debug_error_string() or "")


async def first_sotw_response(
    open_channel: Callable[[], grpc.aio.Channel], node: base_pb2.Node, type_url: str, *, attempts: int = 3
) -> discovery_pb2.DiscoveryResponse:
    """Open a SotW stream on a new channel, ask for `type_url` and return the first response; raises the
    server's AioRpcError. A write that lost the race with a refusal (`lost_write_race`) is tried again."""
    for attempt in range(attempts):
        channel = open_channel()
        try:
            client = SotwClient(channel, node)
            await client.request(type_url)
            return await client.recv()
        except grpc.aio.AioRpcError as error:
            if attempt + 1 == attempts or not lost_write_race(error):
                raise
        finally:
            await channel.close()
    raise AssertionError("unreachable")


class SotwClient:
    def __init__(self, channel: grpc.aio.Channel, node: base_pb2.Node | None) -> None:
        self.node = node
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self._sent_node = False

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
        )
        if not self._sent_node and self.node is not None:
            req.node.CopyFrom(self.node)
            self._sent_node = True
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self, wait: float = TIMEOUT) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), wait)
        assert response is not grpc.aio.EOF, "stream ended"
        return response  # type: ignore[no-any-return]

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        await self.request(response.type_url, names, nonce=response.nonce, version=response.version_info)

    async def close(self) -> None:
        self.call.cancel()


class DeltaClient:
    def __init__(self, channel: grpc.aio.Channel, node: base_pb2.Node | None) -> None:
        self.node = node
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        self._sent_node = False

    async def request(
        self,
        type_url: str,
        *,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        if not self._sent_node and self.node is not None:
            req.node.CopyFrom(self.node)
            self._sent_node = True
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self, wait: float = TIMEOUT) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), wait)
        assert response is not grpc.aio.EOF, "stream ended"
        return response  # type: ignore[no-any-return]

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        await self.request(response.type_url, nonce=response.nonce)

    async def close(self) -> None:
        self.call.cancel()


class XdsHarness:
    def __init__(
        self, *, debounce: float = 0.0, send_timeout: float = 10.0, limits: StreamLimits | None = None
    ) -> None:
        self.store = ConfigStore()
        self.registry = Registry(self.store)
        self.service = DiscoveryService(
            self.registry,
            debounce_quiet=debounce,
            debounce_max=debounce,
            send_timeout=send_timeout,
            push_concurrency=4,
            control_plane_id="istiod-test",
            limits=limits,
        )
        self.server = grpc.aio.server()
        AdsServer(self.service, secure=False).register(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self._task: asyncio.Task[None] | None = None
        self._channels: list[grpc.aio.Channel] = []

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self.service.run())

    async def stop(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.server.stop(0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.store.apply([(ObjectKey.of(o), o) for o in objects])

    def delete(self, *objects: Mapping[str, Any]) -> None:
        self.store.apply([(ObjectKey.of(o), None) for o in objects])

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        """A channel to the server, or to `address` (a relay in front of it)."""
        channel = grpc.aio.insecure_channel(address or f"127.0.0.1:{self.port}")
        self._channels.append(channel)
        return channel

    def sotw(self, node_: base_pb2.Node | None = None) -> SotwClient:
        return SotwClient(self.channel(), node_ if node_ is not None else node())

    def delta(self, node_: base_pb2.Node | None = None) -> DeltaClient:
        return DeltaClient(self.channel(), node_ if node_ is not None else node())


@contextlib.asynccontextmanager
async def web_alone(*, limits: StreamLimits | None = None, debounce: float = 0.0) -> AsyncIterator[XdsHarness]:
    """A started harness serving Service `web` (10.96.0.1, endpoint 10.1.0.1) alone; stopped on exit."""
    harness = XdsHarness(limits=limits, debounce=debounce)
    harness.apply(m.service("web", cluster_ip="10.96.0.1"), m.endpoint_slice("web", ips=["10.1.0.1"]))
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


@contextlib.asynccontextmanager
async def web_and_api(*, web_ips: Sequence[str] = ("10.1.0.1",)) -> AsyncIterator[XdsHarness]:
    """A started harness serving Services `web` (10.96.0.1, endpoints `web_ips`) and `api` (10.96.0.2,
    10.1.1.1), the clusters `WEB` and `API`; stopped on exit."""
    harness = XdsHarness()
    harness.apply(
        m.service("web", cluster_ip="10.96.0.1"),
        m.endpoint_slice("web", ips=list(web_ips)),
        m.service("api", cluster_ip="10.96.0.2"),
        m.endpoint_slice("api", ips=["10.1.1.1"]),
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
