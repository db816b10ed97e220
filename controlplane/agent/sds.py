"""SDS for Envoy on a Unix socket: secrets `default` (certificate and key) and `ROOTCA` (trust bundle).

State of the World streams (`StreamSecrets`): the first request of a stream, or a change of the
requested names, is answered with every requested secret the agent has; every rotation or root
change is pushed to every open stream. ACKs get no answer; a NACK is logged. A secret the agent
does not have yet (no certificate: the CA has not answered) is sent once it arrives, so Envoy
simply waits. Names other than `default` and `ROOTCA` are never answered, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.agent import metrics
from controlplane.agent.secrets import SecretManager
from controlplane.agent.unixgrpc import start_unix_server, stop_unix_server

log = logging.getLogger(__name__)

CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


class SdsError(Exception):
    """The SDS socket cannot be served; the message names the path and why."""


def build_secret(name: str, manager: SecretManager) -> secret_pb2.Secret | None:
    """The secret `name` as of now, or None when the agent does not have it (yet)."""
    if name == CERT_SECRET and manager.credential is not None:
        cred = manager.credential
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=cred.chain_pem),
                private_key=base_pb2.DataSource(inline_bytes=cred.key_pem),
            ),
        )
    if name == ROOT_SECRET and manager.bundle is not None:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=manager.bundle.pem)
            ),
        )
    return None


class SdsService:
    """`envoy.service.secret.v3.SecretDiscoveryService`, State of the World only."""

    def __init__(self, manager: SecretManager) -> None:
        self.manager = manager
        self.streams = 0

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
        seen = self.manager.version
        try:
            while True:
                next_request = asyncio.ensure_future(requests.get())
                change = asyncio.ensure_future(self.manager.wait_change(seen))
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
                            "Envoy rejected secrets %s: %s",
                            ",".join(request.resource_names), request.error_detail.message[:500],
                        )  # fmt: skip
                    new_names = tuple(sorted(request.resource_names))
                    if new_names != names:
                        unknown = [n for n in new_names if n not in (CERT_SECRET, ROOT_SECRET)]
                        if unknown:
                            log.warning("Envoy asked for secrets the agent does not serve: %s", ",".join(unknown))
                        names, sent = new_names, {}
                seen = self.manager.version
                response = self._response(names, sent, nonce + 1)
                if response is not None:
                    nonce += 1
                    yield response
        finally:
            self.streams -= 1
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _response(
        self, names: tuple[str, ...], sent: dict[str, bytes], nonce: int
    ) -> discovery_pb2.DiscoveryResponse | None:
        """Every requested secret we have, when any of them differs from what this stream was sent."""
        secrets = {n: s for n in names if (s := build_secret(n, self.manager)) is not None}
        current = {n: s.SerializeToString(deterministic=True) for n, s in secrets.items()}
        if not current or current == sent:
            return None
        sent.clear()
        sent.update(current)
        response = discovery_pb2.DiscoveryResponse(
            type_url=SECRET_TYPE, version_info=str(self.manager.version), nonce=str(nonce)
        )
        for name, secret in secrets.items():
            response.resources.add().Pack(secret)
            metrics.SDS_PUSHES.labels(secret=name).inc()
        return response


class SdsServer:
    """The gRPC server on the Unix socket. `start()` raises SdsError; `stop()` removes the socket."""

    def __init__(self, manager: SecretManager, path: pathlib.Path) -> None:
        self.path = path
        self.service = SdsService(manager)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = await start_unix_server(self.path, what="SDS", register=self.service.register, error=SdsError)
        log.info("serving SDS on %s", self.path)

    async def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        await stop_unix_server(server, self.path, grace=grace)
