"""One State of the World SDS stream (`envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`).

Shared by the sidecar agent's SDS server (`controlplane.agent.sds`: `default`, `ROOTCA`) and the
secure port's front end (`controlplane.frontsds`: `serving`, `trust`); they differ only in what
`Secrets` holds. The protocol, as Envoy speaks it:

- the first request of a stream, and any request that changes the requested names, is answered
  with every requested secret there is; a secret that does not exist yet is sent once it does, so
  Envoy simply waits for it;
- whenever `Secrets.version` moves, every requested secret is sent again, if any of them differs
  from what this stream was last sent (compared as serialized bytes);
- an ACK gets no answer; a NACK (`error_detail`) is logged, with Envoy's message cut to 500
  characters; names outside `Secrets.names` are logged once per change of the names, never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
_NACK_CHARS = 500


class Secrets(Protocol):
    """What a stream serves."""

    names: frozenset[str]  # the secret names there are; other names are never answered

    @property
    def version(self) -> int:
        """Moves whenever a secret may have changed."""

    async def wait_change(self, seen: int) -> object:
        """Returns once `version` is no longer `seen`."""

    def secret(self, name: str) -> secret_pb2.Secret | None:
        """The secret `name` as of now; None while it does not exist."""


StreamHandler = Callable[
    [AsyncIterator[discovery_pb2.DiscoveryRequest], "grpc.aio.ServicerContext[Any, Any]"],
    AsyncIterator[discovery_pb2.DiscoveryResponse],
]


def register(server: grpc.aio.Server, stream_secrets: StreamHandler) -> None:
    """Serve `stream_secrets` as SecretDiscoveryService/StreamSecrets on `server`."""
    handlers = {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            stream_secrets,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SDS_SERVICE, handlers),))


async def serve_stream(
    requests_in: AsyncIterator[discovery_pb2.DiscoveryRequest],
    secrets: Secrets,
    *,
    peer: str,
    on_sent: Callable[[str], None] | None = None,
) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
    """The responses of one stream. `peer` names the client in log lines; `on_sent(name)` per secret sent."""
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for request in requests_in:
                await requests.put(request)
        finally:
            await requests.put(None)

    reader = asyncio.create_task(pump())
    names: tuple[str, ...] = ()
    sent: dict[str, bytes] = {}  # name -> serialized secret last sent on this stream
    nonce = 0
    seen = secrets.version
    try:
        while True:
            next_request = asyncio.ensure_future(requests.get())
            change = asyncio.ensure_future(secrets.wait_change(seen))
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
                        peer, ",".join(request.resource_names), request.error_detail.message[:_NACK_CHARS],
                    )  # fmt: skip
                new_names = tuple(sorted(request.resource_names))
                if new_names != names:
                    unknown = [n for n in new_names if n not in secrets.names]
                    if unknown:
                        log.warning("%s asked for secrets that are not served here: %s", peer, ",".join(unknown))
                    names, sent = new_names, {}
            seen = secrets.version
            current = {n: s for n in names if (s := secrets.secret(n)) is not None}
            serialized = {n: s.SerializeToString(deterministic=True) for n, s in current.items()}
            if not serialized or serialized == sent:
                continue
            sent = serialized
            nonce += 1
            response = discovery_pb2.DiscoveryResponse(type_url=SECRET_TYPE, version_info=str(seen), nonce=str(nonce))
            for name, secret in current.items():
                response.resources.add().Pack(secret)
                if on_sent is not None:
                    on_sent(name)
            yield response
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
