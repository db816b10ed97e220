"""SDS for the secure port's Envoy front end: its serving certificate and the trust for client certificates.

Two secrets, served over `envoy.service.secret.v3.SecretDiscoveryService` (State of the World) on a
Unix socket in the front end's private directory, never on the secure port itself:

- `serving` (`tls_certificate`): meshplane's serving chain and key;
- `trust` (`validation_context`): the mesh roots (both of them during a root rotation) plus the
  serving authority's signer and intermediates, so a leaf from a plug-in intermediate verifies
  without the client sending the chain.

A stream is answered with every requested secret on its first request and whenever the requested
names change, and again whenever `ServingCertificate.generation` moves (a reissue at half-life or a
new trust bundle), checked every `poll` seconds. ACKs get no answer; a NACK is logged. Names other
than these two are logged and never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from certs.pem import cert_pem
from certs.serving import ServingCertificate
from controlplane.tlsfront import SERVING_SECRET, TRUST_SECRET

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


def trust_pem(serving: ServingCertificate) -> bytes:
    """The roots, the signer and its intermediates, each once, as one PEM bundle."""
    authority = serving.authority
    return b"".join(dict.fromkeys(cert_pem(c) for c in (*authority.roots, authority.cert, *authority.chain)))


def build_secret(name: str, serving: ServingCertificate) -> secret_pb2.Secret | None:
    """The secret `name` as of now; None for a name this server does not serve."""
    if name == SERVING_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=serving.chain_pem()),
                private_key=base_pb2.DataSource(inline_bytes=serving.key_pem),
            ),
        )
    if name == TRUST_SECRET:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=trust_pem(serving))
            ),
        )
    return None


class FrontEndSecrets:
    """The SDS service (register it on the front end's private gRPC server)."""

    def __init__(self, serving: ServingCertificate, *, poll: float = 0.2) -> None:
        self.serving = serving
        self.poll = poll

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
        names: tuple[str, ...] = ()
        sent_generation = -1
        nonce = 0
        getter: asyncio.Future[discovery_pb2.DiscoveryRequest | None] | None = None
        try:
            while True:
                getter = getter or asyncio.ensure_future(requests.get())
                done, _ = await asyncio.wait({getter}, timeout=self.poll)
                request = getter.result() if done else ...  # `...`: no request, only look for a reissue
                if done:
                    getter = None
                if request is None:
                    return
                if isinstance(request, discovery_pb2.DiscoveryRequest):
                    if request.HasField("error_detail"):
                        log.warning("secure port's Envoy rejected its secrets: %s", request.error_detail.message[:500])
                    new_names = tuple(sorted(request.resource_names))
                    if new_names != names:
                        unknown = [n for n in new_names if n not in (SERVING_SECRET, TRUST_SECRET)]
                        if unknown:
                            log.warning("secure port's Envoy asked for unknown secrets: %s", ",".join(unknown))
                        names, sent_generation = new_names, -1
                generation = self.serving.generation
                if names and generation != sent_generation:
                    nonce += 1
                    sent_generation = generation
                    response = discovery_pb2.DiscoveryResponse(
                        type_url=SECRET_TYPE, version_info=str(generation), nonce=str(nonce)
                    )
                    for name in names:
                        secret = build_secret(name, self.serving)
                        if secret is not None:
                            response.resources.add().Pack(secret)
                    yield response
        finally:
            if getter is not None:
                getter.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
