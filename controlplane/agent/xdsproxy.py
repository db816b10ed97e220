"""The agent's local xDS proxy: proxyless gRPC clients talk ADS to the agent, the agent to the control plane.

grpcio's xDS client reconnects to a lost server with its own backoff (1 s x 1.6^n, up to 120 s), so a
proxyless client could stay unsynced long after a control-plane restart. Instead its bootstrap points it
at this proxy, on a Unix socket in the proxy dir (plaintext: the socket is local to the pod, mode 0600).
Each downstream ADS stream (State of the World) gets one upstream stream at a time to the discovery
address, over mTLS with the workload certificate current when it connects (so rotations are used).
Requests go up, responses come down; the latest request of every type is remembered.

When the upstream stream fails with UNAVAILABLE, DEADLINE_EXCEEDED or INTERNAL, or the server ends
it, the downstream stream stays open (INTERNAL is what gRPC reports for a stream reset mid-response,
RST_STREAM INTERNAL_ERROR, which the control plane's TLS front end sends when the process behind it
dies; the control plane itself never refuses with it): the proxy logs once what it waits for and reconnects with a short
jittered backoff (0.2 s doubling to 2 s). On reconnect it replays the latest request of every type,
the node on the first, with version_info but without response_nonce and error_detail: the new server
sent no nonce yet, so it answers each as a reconnect, with full state. Requests that arrive while the
upstream is down only update that record.

A downstream request whose nonce is not the last one the current upstream sent for its type (an
ACK/NACK of the previous server's response, or a late ACK) is not forwarded as it is. Our server
(`discovery.connection.should_respond`) would ignore it as stale for a type it already serves, but take
it as a first request for a type it does not serve yet, and record a NACK against state it never sent
(proxy-status NACKED). So it is dropped, unless it changes the subscribed names: then it goes up
without nonce and error_detail, and the server answers the new names at once.

Other upstream errors (PERMISSION_DENIED, INVALID_ARGUMENT, ...) end the downstream stream with the
same status and details, and are logged. When the downstream stream ends, its upstream is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as Request
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse as Response

from controlplane.agent.secrets import SecretManager
from controlplane.agent.unixgrpc import start_unix_server, stop_unix_server

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"
SOCKET_NAME = "XDS"  # as Istio's agent names it, in the proxy dir
# Retried with backoff; RESOURCE_EXHAUSTED: the server asks this client to slow down (token reviews).
RETRIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

Status = tuple[grpc.StatusCode, str]  # how a downstream stream ends


class XdsProxyError(Exception):
    """The proxy's socket cannot be served; the message names the path and what to do."""


def replay(latest: Iterable[Request], node: Any | None) -> list[Request]:
    """The requests that open a new upstream stream: each as remembered, without nonce and error
    detail (a new server sent neither), the node on the first one only."""
    out: list[Request] = []
    for request in latest:
        fresh = Request()
        fresh.CopyFrom(request)
        for name in ("response_nonce", "error_detail", "node"):
            fresh.ClearField(name)
        out.append(fresh)
    if out and node is not None:
        out[0].node.CopyFrom(node)
    return out


def upstream_request(
    request: Request, *, nonces: Mapping[str, str], names: Mapping[str, tuple[str, ...]]
) -> Request | None:
    """What to send upstream for a downstream `request`; None to drop it.

    `nonces` holds, per type, the last nonce the current upstream sent; `names`, per type, the resource
    names last sent to it. A request without nonce, or with that nonce, goes as it is; one with any
    other nonce is dropped unless it changes the names, then it goes without nonce and error detail."""
    nonce = request.response_nonce
    if not nonce or nonce == nonces.get(request.type_url):
        return request
    if tuple(request.resource_names) == names.get(request.type_url):
        return None
    fresh = Request()
    fresh.CopyFrom(request)
    fresh.ClearField("response_nonce")
    fresh.ClearField("error_detail")
    return fresh


class _Relay:
    """One downstream stream and the upstream streams that serve it, one after the other."""

    def __init__(self, proxy: XdsProxy) -> None:
        self.proxy = proxy
        self.latest: dict[str, Request] = {}  # type URL -> the latest downstream request, in first-seen order
        self.node: Node | None = None
        self.pending: asyncio.Queue[Request] = asyncio.Queue()  # for the current upstream stream
        self.down: asyncio.Queue[Response | Status | None] = asyncio.Queue()  # None: the downstream ended
        self.first_request = asyncio.Event()
        self.answered = False  # the current upstream stream has sent a response
        self.lost = False  # the upstream failed and has not answered since

    async def read_downstream(self, requests: AsyncIterator[Request]) -> None:
        try:
            async for request in requests:
                if self.node is None and request.HasField("node"):
                    self.node = Node()
                    self.node.CopyFrom(request.node)
                self.latest[request.type_url] = request
                self.pending.put_nowait(request)
                self.first_request.set()
        finally:
            self.down.put_nowait(None)

    async def keep_upstream(self) -> None:
        """Connect, relay, reconnect; returns only after passing a final status downstream."""
        await self.first_request.wait()
        first, limit = self.proxy.backoff
        delay = first
        while True:
            try:
                await self.relay_upstream()
                why = "the server ended the stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED:
                    log.warning(
                        "the xDS server at %s refused the stream (%s: %s); passing that to the gRPC client",
                        self.proxy.address, exc.code().name, exc.details(),
                    )  # fmt: skip
                    self.down.put_nowait((exc.code(), exc.details() or ""))
                    return
                why = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a certificate grpcio cannot use, a bug: end the stream, do not hang it
                log.exception("relaying xDS to %s failed", self.proxy.address)
                self.down.put_nowait((grpc.StatusCode.INTERNAL, f"the agent's xDS proxy failed: {exc}"))
                return
            if self.answered:
                delay = first
            if not self.lost:
                log.warning(
                    "waiting for the xDS server at %s (%s); the gRPC client's stream stays open, reconnecting",
                    self.proxy.address, why,
                )  # fmt: skip
                self.lost = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, limit)

    async def relay_upstream(self) -> None:
        """One upstream stream, until it ends; raises grpc.aio.AioRpcError when it fails."""
        credentials = await self.proxy.channel_credentials()
        self.answered = False
        async with grpc.aio.secure_channel(self.proxy.address, credentials, options=self.proxy.channel_options) as ch:
            ads: Any = ch.stream_stream(ADS_METHOD, Request.SerializeToString, Response.FromString)
            call = ads()
            nonces: dict[str, str] = {}
            names: dict[str, tuple[str, ...]] = {}
            while not self.pending.empty():
                self.pending.get_nowait()  # already in self.latest, which the replay sends
            writer = asyncio.create_task(self._write(call, nonces, names))
            try:
                async for response in call:
                    if self.lost:
                        log.info("xDS stream to %s restored; replayed %d types", self.proxy.address, len(self.latest))
                        self.lost = False
                    self.answered = True
                    nonces[response.type_url] = response.nonce
                    self.down.put_nowait(response)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await writer
                call.cancel()

    async def _write(self, call: Any, nonces: Mapping[str, str], names: dict[str, tuple[str, ...]]) -> None:
        for request in replay(self.latest.values(), self.node):
            names[request.type_url] = tuple(request.resource_names)
            await call.write(request)
        while True:
            out = upstream_request(await self.pending.get(), nonces=nonces, names=names)
            if out is not None:
                names[out.type_url] = tuple(out.resource_names)
                await call.write(out)


class XdsProxy:
    """ADS on the Unix socket `path`, relayed to `address` over mTLS (the server must present a certificate
    for `server_name` under the mesh roots). `start()` raises XdsProxyError; `stop()` removes the socket."""

    def __init__(
        self,
        *,
        secrets: SecretManager,
        address: str,
        server_name: str,
        path: pathlib.Path,
        backoff: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        self.secrets = secrets
        self.address = address
        self.path = path
        self.backoff = backoff
        # a channel of its own per attempt (fresh credentials); no channel-level backoff to wait out
        self.channel_options = [
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self._server: grpc.aio.Server | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials from the current workload certificate; waits for the first one."""
        while (cred := self.secrets.credential) is None or (bundle := self.secrets.bundle) is None:
            await self.secrets.wait_change(self.secrets.version)
        return grpc.ssl_channel_credentials(bundle.pem, private_key=cred.key_pem, certificate_chain=cred.chain_pem)

    async def _stream(self, requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
        relay = _Relay(self)
        reader = asyncio.create_task(relay.read_downstream(requests))
        upstream = asyncio.create_task(relay.keep_upstream())
        try:
            while (item := await relay.down.get()) is not None:
                if isinstance(item, tuple):
                    await context.abort(*item)
                yield item
        finally:
            for task in (reader, upstream):
                task.cancel()
            await asyncio.gather(reader, upstream, return_exceptions=True)

    def _register(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, {"StreamAggregatedResources": handler}),)
        )

    async def start(self) -> None:
        self._server = await start_unix_server(
            self.path,
            what="xDS proxy",
            register=self._register,
            error=XdsProxyError,
            hint="choose a shorter --proxy-dir",
        )
        log.info("serving xDS to gRPC clients on %s, relayed to %s", self.path, self.address)

    async def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        await stop_unix_server(server, self.path, grace=grace)
