"""How the running front end carries large responses: an xDS push to one sidecar of a 1,000-service mesh
is ~2 MB of DATA frames, and Envoy must be able to hold a good part of it per connection."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from certs.authority import Authority, self_signed_root
from certs.pem import generate_key
from certs.serving import ServingCertificate
from controlplane.grpcserver import GrpcServers
from controlplane.settings import Address
from controlplane.tlsfront import FrontTuning

SERVER_NAME = "istiod.istio-system.svc"
METHOD = "/test.Push/Stream"
MESSAGE = 16 * 1024  # as a push arrives: many DATA frames of gRPC's and Envoy's largest size
PUSH = 4 * 1024 * 1024


def payload(index: int) -> bytes:
    return hashlib.sha256(index.to_bytes(4, "big")).digest() * (MESSAGE // 32)


def push_service() -> Callable[[grpc.aio.Server], None]:
    async def stream(_: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        for index in range(PUSH // MESSAGE):
            yield payload(index)

    handler = grpc.method_handlers_generic_handler(
        "test.Push", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    return lambda server: server.add_generic_rpc_handlers((handler,))


@dataclass
class Front:
    root_pem: bytes
    servers: GrpcServers

    def channel(self) -> grpc.aio.Channel:
        assert self.servers.front is not None
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.servers.front.port}",
            grpc.ssl_channel_credentials(root_certificates=self.root_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)],
        )

    async def admin(self, path: str) -> dict[str, Any]:
        """A JSON page of the running Envoy's admin API (`config_dump`, `runtime`, ...)."""
        assert self.servers.front is not None
        connector = aiohttp.UnixConnector(path=str(self.servers.front.admin))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"http://admin/{path}") as response,
        ):
            return dict(await response.json(content_type=None))


@pytest.fixture(params=[FrontTuning(), FrontTuning(oghttp2=True)], ids=["nghttp2", "oghttp2"])
async def front(request: pytest.FixtureRequest) -> AsyncIterator[Front]:
    key = generate_key("ecdsa-p256")
    root = self_signed_root(key, org="cluster.local")
    ca = Authority(key=key, cert=root, roots=(root,))
    servers = GrpcServers(
        plaintext_addr=None,
        secure_addr=Address(host="127.0.0.1", port=0),
        serving=ServingCertificate(ca, hosts=(SERVER_NAME,)),
        front_tuning=request.param,
    )
    servers.add(push_service(), plaintext=False, secure=True)
    try:
        await servers.start()
        yield Front(ca.root_pem, servers)
    finally:
        await servers.stop(0)


async def test_a_multi_megabyte_stream_arrives_whole_through_the_front_end(front: Front) -> None:
    async with front.channel() as channel:
        call = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
        received = [message async for message in call(b"", timeout=60)]
    assert received == [payload(index) for index in range(PUSH // MESSAGE)]


async def test_the_running_envoy_buffers_a_megabyte_per_connection_each_side(front: Front) -> None:
    # With 256 KiB Envoy paused the internal server's stream every ~25 KB of a push to a busy
    # sidecar (bench/xds --secure: 60-90k pauses per push, ~0.5 s of Envoy CPU); see FrontTuning.
    dump = await front.admin("config_dump")
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
    listener = listeners["static_listeners"][0]["listener"]
    internal = next(c["cluster"] for c in clusters["static_clusters"] if c["cluster"]["name"] == "internal")
    assert listener["per_connection_buffer_limit_bytes"] >= 1 << 20
    assert internal["per_connection_buffer_limit_bytes"] >= 1 << 20


async def test_the_running_envoy_uses_the_codec_the_tuning_names(front: Front) -> None:
    # Set either way, so an Envoy upgrade that changes its default codec does not change the front end's.
    entries = (await front.admin("runtime"))["entries"]
    chosen = front.servers.front_tuning.oghttp2
    assert entries["envoy.reloadable_features.http2_use_oghttp2"]["final_value"] == str(chosen).lower()
