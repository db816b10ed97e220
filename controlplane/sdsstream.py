"""One State of the World SDS stream (`envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`).

Shared by the sidecar agent's SDS server (`controlplane.agent.sds`: `default`, `ROOTCA`) and the
secure port's front end (`controlplane.frontsds`: `serving`, `trust`); they differ only in what
`SecretDiscovery` subclasses serve. The protocol, as Envoy speaks it:

- the first request of a stream, and any request that changes the requested names, is answered
  with every requested secret there is; a secret that does not exist yet is sent once it does, so
  Envoy simply waits for it;
- whenever `SecretDiscovery.version` moves, every requested secret is sent again, if any of them differs
  from what this stream was last sent (compared as serialized bytes);
- an ACK gets no answer; a NACK (`error_detail`) is logged, with Envoy's message cut to 500
  characters; names outside `SecretDiscovery.names` are logged once per change of the names, never answered.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
_NACK_CHARS = 500


class SecretDiscovery(abc.ABC):
    """`envoy.service.secret.v3.SecretDiscoveryService`, State of the World; subclasses say what it serves."""

    names: frozenset[str] = frozenset()  # the secret names there are; other names are never answered
    peer = "Envoy"  # who the client is, in log lines

    def __init__(self, *, on_sent: Callable[[str], None] | None = None) -> None:
        self.streams = 0  # open now
        self._on_sent = on_sent  # called with the name of every secret sent, on any stream

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Moves whenever a secret may have changed."""

    @abc.abstractmethod
    async def wait_change(self, seen: int) -> object:
        """Returns once `version` is no longer `seen`."""

    @abc.abstractmethod
    def secret(self, name: str) -> secret_pb2.Secret | None:
        """The secret `name` as of now; None while it does not exist."""

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                self.stream_secrets,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SDS_SERVICE, handlers),))

    async def stream_secrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    await requests.put(request)
            finally:
                await requests.put(None)

        reader = asyncio.create_task(pump())
        self.streams += 1
        names: tuple[str, ...] = ()
        sent: dict[str, bytes] = {}  # name -> serialized secret last sent on this stream
        nonce = 0
        seen = self.version
        try:
            while True:
                next_request = asyncio.ensure_future(requests.get())
                change = asyncio.ensure_future(self.wait_change(seen))
                done, _ = await asyncio.wait({next_request, change}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (next_request, change):
                    if pending not in done:
                        pending.cancel()  # a cancelled Queue.get leaves its item queued
                        with contextlib.suppress(asyncio.CancelledError):
                            await pending
                if next_request in done:
                    request = next_request.result()
                    if request is None:
                        return
                    if request.HasField("error_detail"):
                        log.warning(
                            "%s rejected secrets %s: %s",
                            self.peer, ",".join(request.resource_names), request.error_detail.message[:_NACK_CHARS],
                        )  # fmt: skip
                    new_names = tuple(sorted(request.resource_names))
                    if new_names != names:
                        unknown = [n for n in new_names if n not in self.names]
                        if unknown:
                            log.warning("%s asked for secrets not served here: %s", self.peer, ",".join(unknown))
                        names, sent = new_names, {}
                seen = self.version
                current = {n: s for n in names if (s := self.secret(n)) is not None}
                serialized = {n: s.SerializeToString(deterministic=True) for n, s in current.items()}
                if not serialized or serialized == sent:
                    continue
                sent = serialized
                nonce += 1
                response = discovery_pb2.DiscoveryResponse(
                    type_url=SECRET_TYPE, version_info=str(seen), nonce=str(nonce)
                )
                for name, secret in current.items():
                    response.resources.add().Pack(secret)
                    if self._on_sent is not None:
                        self._on_sent(name)
                yield response
        finally:
            self.streams -= 1
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
